"""Alert label and annotation templates: Go's text/template language with Prometheus's functions.

Prometheus (2.42, the version `promtool` on Debian 12 runs) expands each alert label and annotation
by prepending `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL :=
.ExternalURL}}{{$value := .Value}}` and executing the text with Go's text/template, option
missingkey=zero, over the data {Labels, ExternalLabels, ExternalURL, Value}. This module is a port of
the parts of Go 1.19 that this needs, so that a rule file behaves in gpumon as it does in Prometheus,
byte for byte where we could check it against promtool:

* a lexer and a recursive-descent parser that mirror text/template/parse, with the same
  acceptance, the same scoping of variables, and Go's messages (`function "foo" not defined`,
  `unexpected {{end}}`, ...), raised as `TemplateError` when the rule loads, with line and column;
* an evaluator that mirrors text/template's exec.go: Go's value kinds (string, int, float64, uint8,
  bool, map[string]string, template.HTML, the data struct, nil), its truth rules, its argument
  checks, and its runtime error messages, which Prometheus renders as
  `<error expanding template: ...>` instead of the text;
* Go's fmt (`print`, `printf`, and how values print) and strconv float formatting;
* Prometheus's template functions; regular expressions run by RE2 (`gpumon.regex`), as Go's do.

Not supported, and rejected when the rule loads with a message that says so: `query` and the
functions that only make sense on its results (gpumon cannot run PromQL from a template), links into
the Prometheus UI, `toTime`, `args`/`call`, `{{define}}`/`{{template}}`/`{{block}}` and complex numbers.

Known approximations: case mapping uses Python's Unicode tables and regular expressions RE2's, not
Go 1.19's; and runtime error texts name the template "__alert_" plus the `alert_name` given to
`compile_template`, as Prometheus names it after the alert.
"""

from __future__ import annotations

import ipaddress
import math
import re
import struct
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import NoReturn

from gpumon.regex import RegexError, compile_go, replace_all

__all__ = ["FUNCTIONS", "Template", "TemplateError", "compile_template"]


class TemplateError(Exception):
    """A template that Prometheus would refuse to load, or that uses what gpumon does not support."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(f"line {line}, column {column}: {message}" if line else message)
        self.message, self.line, self.column = message, line, column


def _error_at(text: str, pos: int, message: str) -> TemplateError:
    line = text.count("\n", 0, pos) + 1
    return TemplateError(message, line, pos - (text.rfind("\n", 0, pos) + 1) + 1)


# ---------------------------------------------------------------------------------------------
# Go values. A template sees Python values standing for Go ones; the Go type decides how a value
# prints, compares and converts, so the few Go types that differ from Python's get a subclass.


class _HTML(str):
    """html/template.HTML, what safeHtml returns: prints as text, but is not a Go `string`."""


class _Byte(int):
    """uint8, what `index` of a string returns (a byte, not a character)."""


@dataclass(frozen=True)
class _Data:
    """The struct Prometheus executes alert templates on (AlertTemplateData)."""

    labels: dict[str, str]
    external_labels: dict[str, str]
    external_url: str
    value: float

    def fields(self) -> list[tuple[str, _Value]]:
        return [("Labels", self.labels), ("ExternalLabels", self.external_labels),
                ("ExternalURL", self.external_url), ("Value", self.value)]


_Value = None | bool | int | float | str | dict[str, str] | _Data  # None is Go's nil
_DATA_TYPE = ("struct { Labels map[string]string; ExternalLabels map[string]string; "
              "ExternalURL string; Value float64 }")


class _Missing:
    """No value from a previous pipeline stage (Go's missingVal), as opposed to nil."""


_MISSING = _Missing()


def _type_name(v: _Value) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, _Byte):
        return "uint8"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, _HTML):
        return "template.HTML"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map[string]string"
    return _DATA_TYPE


def _utf8(s: str) -> bytes:
    # Strings built from "\xff"-style escapes hold their invalid bytes as surrogateescape characters.
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _from_utf8(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _is_true(v: _Value) -> bool:
    """Go's template truth: false, 0, nil and empty strings and maps are false; NaN is true."""
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return v != 0
    if isinstance(v, (str, dict)):
        return len(v) > 0
    return True  # structs are always true


# ---------------------------------------------------------------------------------------------
# Lexer (text/template/parse/lex.go). Errors become an "error" token where they occur, and the
# parser reports them when it reaches them, as Go does.

_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "nil", "range",
                       "template", "with"})


@dataclass(frozen=True)
class _Token:
    kind: str  # "text", "leftDelim", "number", "if", "dot", ... ; keywords are their own kind
    val: str
    pos: int

    def __str__(self) -> str:  # Go's item.String(), used in parse errors
        if self.kind == "eof":
            return "EOF"
        if self.kind == "error":
            return self.val
        if self.kind in _KEYWORDS or self.kind == "dot":
            return f"<{self.val}>"
        if len(_utf8(self.val)) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or unicodedata.category(c) == "Nd" if c else False


def _pound_u(c: str) -> str:  # Go's %#U
    return f"U+{ord(c):04X} '{c}'" if c.isprintable() else f"U+{ord(c):04X}"


def _has_left_trim(s: str, i: int) -> bool:
    return len(s) - i >= 2 and s[i] == "-" and s[i + 1] in _SPACE


def _has_right_trim(s: str, i: int) -> bool:
    return len(s) - i >= 2 and s[i] in _SPACE and s[i + 1] == "-"


_State = Callable[[], "_State | None"]


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text, self.pos, self.start, self.width, self.paren_depth = text, 0, 0, 0, 0
        self.items: list[_Token] = []

    def run(self) -> list[_Token]:
        state: _State | None = self.lex_text
        while state is not None:
            state = state()
        return self.items

    def next(self) -> str:
        if self.pos >= len(self.text):
            self.width = 0
            return ""
        self.width = 1
        self.pos += 1
        return self.text[self.pos - 1]

    def backup(self) -> None:
        self.pos -= self.width

    def peek(self) -> str:
        c = self.next()
        self.backup()
        return c

    def emit(self, kind: str) -> None:
        self.items.append(_Token(kind, self.text[self.start:self.pos], self.start))
        self.start = self.pos

    def ignore(self) -> None:
        self.start = self.pos

    def accept(self, valid: str) -> bool:
        c = self.next()
        if c and c in valid:
            return True
        self.backup()
        return False

    def accept_run(self, valid: str) -> None:
        while self.accept(valid):
            pass

    def errorf(self, message: str, pos: int | None = None) -> _State | None:
        self.items.append(_Token("error", message, self.start if pos is None else pos))
        return None  # lexing stops at the first error

    def at_right_delim(self) -> tuple[bool, bool]:
        if _has_right_trim(self.text, self.pos) and self.text.startswith("}}", self.pos + 2):
            return True, True
        return self.text.startswith("}}", self.pos), False

    def at_terminator(self) -> bool:
        c = self.peek()
        return c == "" or c in _SPACE or c in ".,|:)(}"

    def lex_text(self) -> _State | None:
        x = self.text.find("{{", self.pos)
        if x < 0:
            self.pos = len(self.text)
            if self.pos > self.start:
                self.emit("text")
            self.emit("eof")
            return None
        self.pos = x
        trim = 0
        if _has_left_trim(self.text, x + 2):  # "{{- " trims the space before it
            before = self.text[self.start:self.pos]
            trim = len(before) - len(before.rstrip(_SPACE))
        self.pos -= trim
        if self.pos > self.start:
            self.emit("text")
        self.pos += trim
        self.ignore()
        return self.lex_left_delim

    def lex_left_delim(self) -> _State | None:
        self.pos += 2
        after = 2 if _has_left_trim(self.text, self.pos) else 0
        if self.text.startswith("/*", self.pos + after):
            self.pos += after
            self.ignore()
            return self.lex_comment
        self.emit("leftDelim")
        self.pos += after
        self.ignore()
        self.paren_depth = 0
        return self.lex_inside_action

    def lex_comment(self) -> _State | None:
        self.pos += 2
        x = self.text.find("*/", self.pos)
        if x < 0:
            return self.errorf("unclosed comment")
        self.pos = x + 2
        delim, trim = self.at_right_delim()
        if not delim:
            return self.errorf("comment ends before closing delimiter")
        self.pos += 4 if trim else 2
        if trim:
            rest = self.text[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(_SPACE))
        self.ignore()
        return self.lex_text

    def lex_right_delim(self) -> _State | None:
        trim = _has_right_trim(self.text, self.pos)
        if trim:
            self.pos += 2
            self.ignore()
        self.pos += 2
        self.emit("rightDelim")
        if trim:  # " -}}" trims the space after it
            rest = self.text[self.pos:]
            self.pos += len(rest) - len(rest.lstrip(_SPACE))
            self.ignore()
        return self.lex_text

    def lex_inside_action(self) -> _State | None:
        if self.at_right_delim()[0]:
            return self.lex_right_delim if self.paren_depth == 0 else self.errorf("unclosed left paren")
        c = self.next()
        if c == "":
            return self.errorf("unclosed action")
        if c in _SPACE:
            self.backup()
            return self.lex_space
        if c == "=":
            self.emit("assign")
        elif c == ":":
            if self.next() != "=":
                return self.errorf("expected :=")
            self.emit("declare")
        elif c == "|":
            self.emit("pipe")
        elif c == '"':
            return self.lex_quote
        elif c == "`":
            return self.lex_raw_quote
        elif c == "$":
            return self.lex_variable
        elif c == "'":
            return self.lex_char
        elif c == "." and self.pos < len(self.text) and not "0" <= self.text[self.pos] <= "9":
            return self.lex_field
        elif c in "+-." or "0" <= c <= "9":
            self.backup()
            return self.lex_number
        elif _is_alnum(c):
            self.backup()
            return self.lex_identifier
        elif c == "(":
            self.emit("leftParen")
            self.paren_depth += 1
        elif c == ")":
            self.emit("rightParen")
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self.errorf(f"unexpected right paren {_pound_u(c)}")
        elif c <= "\x7f" and c.isprintable():
            self.emit("char")
        else:
            return self.errorf(f"unrecognized character in action: {_pound_u(c)}")
        return self.lex_inside_action

    def lex_space(self) -> _State | None:
        spaces = 0
        while (c := self.peek()) and c in _SPACE:
            self.next()
            spaces += 1
        # A space followed by "-}}" belongs to the closing delimiter.
        if _has_right_trim(self.text, self.pos - 1) and self.text.startswith("}}", self.pos + 1):
            self.pos -= 1
            if spaces == 1:
                return self.lex_inside_action
        self.emit("space")
        return self.lex_inside_action

    def lex_quoted(self, quote: str, kind: str, what: str) -> _State | None:
        while True:
            c = self.next()
            if c == "\\":
                if self.next() not in ("", "\n"):
                    continue
                return self.errorf(f"unterminated {what}")
            if c in ("", "\n"):
                return self.errorf(f"unterminated {what}")
            if c == quote:
                self.emit(kind)
                return self.lex_inside_action

    def lex_quote(self) -> _State | None:
        return self.lex_quoted('"', "string", "quoted string")

    def lex_char(self) -> _State | None:
        return self.lex_quoted("'", "charConstant", "character constant")

    def lex_raw_quote(self) -> _State | None:
        x = self.text.find("`", self.pos)
        if x < 0:
            return self.errorf("unterminated raw quoted string")
        self.pos = x + 1
        self.emit("rawString")
        return self.lex_inside_action

    def lex_variable(self) -> _State | None:
        if self.at_terminator():  # "$" alone
            self.emit("variable")
            return self.lex_inside_action
        return self.lex_field_or_variable("variable")

    def lex_field(self) -> _State | None:
        return self.lex_field_or_variable("field")

    def lex_field_or_variable(self, kind: str) -> _State | None:
        if self.at_terminator():  # "." alone
            self.emit("variable" if kind == "variable" else "dot")
            return self.lex_inside_action
        while True:
            c = self.next()
            if not _is_alnum(c):
                self.backup()
                break
        if not self.at_terminator():
            return self.errorf(f"bad character {_pound_u(c)}", self.pos)
        self.emit(kind)
        return self.lex_inside_action

    def lex_identifier(self) -> _State | None:
        while True:
            c = self.next()
            if _is_alnum(c):
                continue
            self.backup()
            word = self.text[self.start:self.pos]
            if not self.at_terminator():
                return self.errorf(f"bad character {_pound_u(c)}", self.pos)
            self.emit(word if word in _KEYWORDS else "bool" if word in ("true", "false") else "identifier")
            return self.lex_inside_action

    def scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if _is_alnum(self.peek()):
            self.next()
            return False
        return True

    def lex_number(self) -> _State | None:
        if not self.scan_number():
            return self.errorf(f"bad number syntax: {_go_quote(self.text[self.start:self.pos])}")
        if self.peek() in ("+", "-"):  # complex: 1+2i
            if not self.scan_number() or self.text[self.pos - 1] != "i":
                return self.errorf(f"bad number syntax: {_go_quote(self.text[self.start:self.pos])}")
            self.emit("complex")
        else:
            self.emit("number")
        return self.lex_inside_action


# ---------------------------------------------------------------------------------------------
# Parse tree (text/template/parse/node.go). str(node) is Go's Node.String(), which runtime errors
# quote as their context ("executing ... at <humanize $value>").


@dataclass
class _Node:
    pos: int


@dataclass
class _Text(_Node):
    text: str


@dataclass
class _List(_Node):
    nodes: list[_Node]


@dataclass
class _Variable(_Node):
    idents: list[str]

    def __str__(self) -> str:
        return ".".join(self.idents)


@dataclass
class _Command(_Node):
    args: list[_Node]

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


@dataclass
class _Pipe(_Node):
    decl: list[_Variable]
    is_assign: bool
    cmds: list[_Command]

    def __str__(self) -> str:
        decl = ", ".join(map(str, self.decl)) + " := " if self.decl else ""
        return decl + " | ".join(map(str, self.cmds))


@dataclass
class _Action(_Node):
    pipe: _Pipe

    def __str__(self) -> str:
        return f"{{{{{self.pipe}}}}}"


@dataclass
class _Control(_Node):  # if, range, with
    kind: str
    pipe: _Pipe
    list: _List
    else_list: _List | None


@dataclass
class _Break(_Node):
    pass


@dataclass
class _Continue(_Node):
    pass


@dataclass
class _Else(_Node):  # only while parsing
    def __str__(self) -> str:
        return "{{else}}"


@dataclass
class _End(_Node):  # only while parsing
    def __str__(self) -> str:
        return "{{end}}"


@dataclass
class _Identifier(_Node):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass
class _Field(_Node):
    idents: list[str]

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


@dataclass
class _Chain(_Node):  # (pipeline).Field or func.Field
    node: _Node
    fields: list[str]

    def __str__(self) -> str:
        head = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return head + "".join("." + f for f in self.fields)


@dataclass
class _Dot(_Node):
    def __str__(self) -> str:
        return "."


@dataclass
class _Nil(_Node):
    def __str__(self) -> str:
        return "nil"


@dataclass
class _Bool(_Node):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass
class _String(_Node):
    quoted: str
    text: str

    def __str__(self) -> str:
        return self.quoted


@dataclass
class _Number(_Node):
    text: str
    is_int: bool = False
    is_uint: bool = False
    is_float: bool = False
    is_char: bool = False
    int_value: int = 0
    float_value: float = 0.0

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------
# Parser (text/template/parse/parse.go), including its checks: functions must exist, variables
# must be declared in scope, {{break}} only inside {{range}}, and so on.

# The variables the Prometheus prefix declares, plus Go's "$" (the data).
_INITIAL_VARS = ("$", "$labels", "$externalLabels", "$externalURL", "$value")
_OPERAND_START = frozenset({"bool", "charConstant", "complex", "dot", "field", "identifier", "number",
                            "nil", "rawString", "string", "variable", "leftParen"})


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Lexer(text).run()
        self.tokens += [self.tokens[-1]] * 4  # the parser may peek past an error or EOF token
        self.i = 0
        self.vars = list(_INITIAL_VARS)
        self.range_depth = 0
        self.action_pos: int | None = None  # where the action being parsed starts, for lexer errors

    def next(self) -> _Token:
        tok = self.tokens[min(self.i, len(self.tokens) - 1)]
        self.i += 1
        return tok

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Token:
        return self.tokens[min(self.i, len(self.tokens) - 1)]

    def next_non_space(self) -> _Token:
        while (tok := self.next()).kind == "space":
            pass
        return tok

    def peek_non_space(self) -> _Token:
        tok = self.next_non_space()
        self.backup()
        return tok

    def errorf(self, message: str, pos: int | None = None) -> NoReturn:
        if pos is None:
            pos = self.tokens[max(self.i - 1, 0)].pos
        raise _error_at(self.text, pos, message)

    def line(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def unexpected(self, tok: _Token, context: str) -> NoReturn:
        if tok.kind == "error":
            extra = ""
            if self.action_pos is not None and self.line(self.action_pos) != self.line(tok.pos):
                extra = f" in action started at line {self.line(self.action_pos)}"
                if tok.val.endswith(" action"):  # not "unclosed action in action started at ..."
                    extra = extra[len(" in action"):]
            self.errorf(tok.val + extra, tok.pos)
        self.errorf(f"unexpected {tok} in {context}", tok.pos)

    def expect(self, kind: str, context: str) -> _Token:
        tok = self.next_non_space()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def parse(self) -> _List:
        root = _List(self.peek().pos, [])
        while self.peek().kind != "eof":
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                self.errorf(f"unexpected {n}", n.pos)
            root.nodes.append(n)
        return root

    def item_list(self) -> tuple[_List, _Node]:
        items = _List(self.peek_non_space().pos, [])
        while self.peek_non_space().kind != "eof":
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                return items, n
            items.nodes.append(n)
        self.errorf("unexpected EOF")

    def text_or_action(self) -> _Node:
        tok = self.next_non_space()
        if tok.kind == "text":
            return _Text(tok.pos, tok.val)
        if tok.kind == "leftDelim":
            self.action_pos = tok.pos
            try:
                return self.action()
            finally:
                self.action_pos = None
        self.unexpected(tok, "input")

    def action(self) -> _Node:
        tok = self.next_non_space()
        if tok.kind in ("block", "define", "template"):
            self.errorf(f"{{{{{tok.kind}}}}} is not supported by gpumon: each alert template is expanded on "
                        "its own, without named templates", tok.pos)
        if tok.kind in ("break", "continue"):
            after = self.next_non_space()
            if after.kind != "rightDelim":
                self.unexpected(after, f"{{{{{tok.kind}}}}}")
            if self.range_depth == 0:
                self.errorf(f"{{{{{tok.kind}}}}} outside {{{{range}}}}", tok.pos)
            return _Break(tok.pos) if tok.kind == "break" else _Continue(tok.pos)
        if tok.kind == "else":
            peek = self.peek_non_space()
            if peek.kind != "if":  # "{{else if" is "{{else}}{{if"; the "if" stays pending
                self.expect("rightDelim", "else")
            return _Else(tok.pos)
        if tok.kind == "end":
            self.expect("rightDelim", "end")
            return _End(tok.pos)
        if tok.kind in ("if", "range", "with"):
            return self.control(tok.kind)
        self.backup()
        return _Action(self.peek().pos, self.pipeline("command", "rightDelim"))

    def control(self, kind: str) -> _Control:
        saved = len(self.vars)  # variables declared in the control are scoped to it, else included
        try:
            pipe = self.pipeline(kind, "rightDelim")
            self.range_depth += kind == "range"
            body, nxt = self.item_list()
            self.range_depth -= kind == "range"
            else_list = None
            if isinstance(nxt, _Else):
                if kind == "if" and self.peek().kind == "if":
                    # {{if a}}x{{else if b}}y{{end}} is {{if a}}x{{else}}{{if b}}y{{end}}{{end}}: one {{end}}.
                    self.next()
                    else_list = _List(nxt.pos, [self.control("if")])
                else:
                    else_list, nxt = self.item_list()
                    if not isinstance(nxt, _End):
                        self.errorf(f"expected end; found {nxt}", nxt.pos)
            return _Control(pipe.pos, kind, pipe, body, else_list)
        finally:
            del self.vars[saved:]

    def pipeline(self, context: str, end: str) -> _Pipe:
        pipe = _Pipe(self.peek_non_space().pos, [], False, [])
        while (v := self.peek_non_space()).kind == "variable":  # declarations: $x := or $k, $v :=
            at_variable = self.i
            self.next()
            nxt = self.peek_non_space()
            if nxt.kind in ("assign", "declare"):
                pipe.is_assign = nxt.kind == "assign"
                self.next_non_space()
                pipe.decl.append(_Variable(v.pos, [v.val]))
                self.vars.append(v.val)
            elif nxt.kind == "char" and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(_Variable(v.pos, [v.val]))
                self.vars.append(v.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().kind in ("variable", "rightDelim", "rightParen"):
                        continue
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            else:
                self.i = at_variable  # not a declaration: $x is the first operand
            break
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                if not pipe.cmds:
                    self.errorf(f"missing value for {context}")
                for i, c in enumerate(pipe.cmds[1:]):
                    if isinstance(c.args[0], (_Bool, _Dot, _Nil, _Number, _String)):
                        self.errorf(f"non executable command in pipeline stage {i + 2}", c.pos)
                return pipe
            if tok.kind not in _OPERAND_START:
                self.unexpected(tok, context)
            self.backup()
            pipe.cmds.append(self.command())

    def command(self) -> _Command:
        cmd = _Command(self.peek_non_space().pos, [])
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("rightDelim", "rightParen"):
                self.backup()
            elif tok.kind != "pipe":
                self.unexpected(tok, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        pos, fields = self.peek().pos, []
        while self.peek().kind == "field":
            fields.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(pos, node.idents + fields)
        if isinstance(node, _Variable):
            return _Variable(pos, node.idents + fields)
        if isinstance(node, (_Bool, _String, _Number, _Nil, _Dot)):
            self.errorf(f"unexpected . after term {_go_quote(str(node))}")
        return _Chain(pos, node, fields)

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "identifier":
            if tok.val not in _FUNCS:
                reason = _UNSUPPORTED.get(tok.val)
                if reason:
                    self.errorf(f"function {_go_quote(tok.val)} is not supported by gpumon: {reason}", tok.pos)
                self.errorf(f"function {_go_quote(tok.val)} not defined", tok.pos)
            return _Identifier(tok.pos, tok.val)
        if kind == "dot":
            return _Dot(tok.pos)
        if kind == "nil":
            return _Nil(tok.pos)
        if kind == "variable":
            v = _Variable(tok.pos, [tok.val])
            if v.idents[0] not in self.vars:
                self.errorf(f"undefined variable {_go_quote(v.idents[0])}", tok.pos)
            return v
        if kind == "field":
            return _Field(tok.pos, tok.val[1:].split("."))
        if kind == "bool":
            return _Bool(tok.pos, tok.val == "true")
        if kind in ("charConstant", "complex", "number"):
            return self.number(tok)
        if kind == "leftParen":
            return self.pipeline("parenthesized pipeline", "rightParen")
        if kind in ("string", "rawString"):
            try:
                return _String(tok.pos, tok.val, _go_unquote(tok.val))
            except ValueError:
                self.errorf("invalid syntax", tok.pos)
        self.backup()
        return None

    def number(self, tok: _Token) -> _Number:
        """Go's parse.newNumber: which of int, uint and float64 the constant can be."""
        text = tok.val
        n = _Number(tok.pos, text)
        if tok.kind == "charConstant":
            try:
                r, tail = _unquote_char(text[1:], "'")
            except ValueError:
                self.errorf("invalid syntax", tok.pos)
            if tail != "'":
                self.errorf(f"malformed character constant: {text}", tok.pos)
            n.is_int = n.is_uint = n.is_float = n.is_char = True
            n.int_value, n.float_value = r, float(r)
            return n
        if tok.kind == "complex" or (text.endswith("i") and _go_parse_float(text[:-1])[1] is None):
            self.errorf("complex number constants are not supported by gpumon", tok.pos)
        u, i = _go_parse_int(text, unsigned=True), _go_parse_int(text, unsigned=False)
        n.is_uint, n.is_int = u is not None, i is not None
        if i is not None:
            n.is_uint = n.is_uint or i == 0  # "-0"
            n.int_value, n.is_float, n.float_value = i, True, float(i)
        elif u is not None:
            n.int_value, n.is_float, n.float_value = u, True, float(u)
        else:
            f, err = _go_parse_float(text)
            if err is None:
                if not any(c in text for c in ".eEpP"):
                    self.errorf(f"integer overflow: {_go_quote(text)}", tok.pos)
                n.is_float, n.float_value = True, f
                if f.is_integer():
                    n.is_int = -(2**63) <= f < 2**63
                    n.is_uint = 0 <= f < 2**64
                    n.int_value = int(f)
        if not (n.is_int or n.is_uint or n.is_float):
            self.errorf(f"illegal number syntax: {_go_quote(text)}", tok.pos)
        return n


# ---------------------------------------------------------------------------------------------
# strconv: Go's string literal unquoting, quoting, and number parsing.


def _unquote_char(s: str, quote: str) -> tuple[int, str]:
    """strconv.UnquoteChar: the first character (or escape) of s as a code point, and the rest.

    Byte escapes (\\xff, \\377) come back as negative numbers -1-byte, so that the caller keeps
    them as bytes rather than characters, as Go does."""
    if not s or (s[0] == quote and quote in "'\""):
        raise ValueError("invalid syntax")
    if s[0] != "\\":
        return ord(s[0]), s[1:]
    if len(s) <= 1:
        raise ValueError("invalid syntax")
    c, s = s[1], s[2:]
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
    if c in simple:
        return simple[c], s
    if c in "xuU":
        n = {"x": 2, "u": 4, "U": 8}[c]
        digits = s[:n]
        if len(digits) < n or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError("invalid syntax")
        v = int(digits, 16)
        if c == "x":
            return (v if v < 0x80 else -1 - v), s[n:]
        if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
            raise ValueError("invalid syntax")
        return v, s[n:]
    if c in "01234567":
        digits = c + s[:2]
        if len(digits) < 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
            raise ValueError("invalid syntax")
        v = int(digits, 8)
        return (v if v < 0x80 else -1 - v), s[2:]
    if c in "'\"" and c == quote:
        return ord(c), s
    raise ValueError("invalid syntax")


def _go_unquote(s: str) -> str:
    """strconv.Unquote of a "..." or `...` literal; raises ValueError("invalid syntax")."""
    if s[0] == "`":
        return s[1:-1].replace("\r", "")  # Go drops carriage returns from raw strings
    body, out = s[1:-1], bytearray()
    if "\n" in body:
        raise ValueError("invalid syntax")
    while body:
        r, body = _unquote_char(body, '"')
        out += bytes([-1 - r]) if r < 0 else chr(r).encode("utf-8", "surrogatepass")
    return _from_utf8(bytes(out))


def _escape_rune(r: int, quote: str, ascii_only: bool) -> str:
    c = chr(r)
    if c == quote or c == "\\":
        return "\\" + c
    if (r < 0x80 or not ascii_only) and c.isprintable():
        return c
    named = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}
    if r in named:
        return named[r]
    if r < 0x20 or r == 0x7F:
        return f"\\x{r:02x}"
    if 0xD800 <= r <= 0xDFFF:
        r = 0xFFFD
    return f"\\u{r:04x}" if r < 0x10000 else f"\\U{r:08x}"


def _go_quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteToASCII): Go's double-quoted form of s."""
    out = []
    for c in s:
        if "\udc80" <= c <= "\udcff":  # an invalid byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(_escape_rune(ord(c), '"', ascii_only))
    return '"' + "".join(out) + '"'


def _quote_rune(r: int, ascii_only: bool) -> str:
    if r > 0x10FFFF or r < 0 or 0xD800 <= r <= 0xDFFF:
        r = 0xFFFD
    return "'" + _escape_rune(r, "'", ascii_only) + "'"


def _can_backquote(s: str) -> bool:
    return all(c == "\t" or (c >= " " and c not in "`\x7f\ufeff" and not "\udc80" <= c <= "\udcff") for c in s)


def _underscore_ok(s: str) -> bool:
    """strconv.underscoreOK: underscores only between digits (or after a base prefix)."""
    saw, i = "^", 0
    if s[:1] in ("-", "+"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i, saw, hexa = 2, "0", s[1].lower() == "x"
    for c in s[i:]:
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
    return saw != "_"


def _go_parse_int(text: str, unsigned: bool) -> int | None:
    """strconv.ParseUint/ParseInt(text, 0, 64), or None where Go reports an error."""
    s, neg = text, False
    if not unsigned and s[:1] in ("+", "-"):
        neg, s = s[0] == "-", s[1:]
    if not s:
        return None
    base, digits = 10, s
    if s[0] == "0":
        if len(s) >= 3 and s[1].lower() in "box":
            base, digits = {"b": 2, "o": 8, "x": 16}[s[1].lower()], s[2:]
        else:
            base, digits = 8, s[1:]
    n = 0
    for c in digits:
        if c == "_":
            continue
        d = int(c, 36) if c.isascii() and c.isalnum() else 99
        if d >= base:
            return None
        n = n * base + d
    if "_" in s and not _underscore_ok(s):
        return None
    if unsigned:
        return n if n < 2**64 else None
    if n > 2**63 - (not neg):
        return None
    return -n if neg else n


_DEC_FLOAT = re.compile(r"[+-]?(?=\.?[0-9])[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9][0-9_]*)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?=\.?[0-9a-fA-F_])[0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?[pP][+-]?[0-9][0-9_]*")


def _go_parse_float(s: str) -> tuple[float, str | None]:
    """strconv.ParseFloat(s, 64): the value and None, or Go's error text."""
    low = s.lower()
    if low in ("inf", "+inf", "infinity", "+infinity", "-inf", "-infinity"):
        return (-math.inf if low[0] == "-" else math.inf), None
    if low == "nan":
        return math.nan, None
    hexa = _HEX_FLOAT.fullmatch(s) is not None
    if not (hexa or _DEC_FLOAT.fullmatch(s)):
        return 0.0, "invalid syntax"
    if "_" in s and not _underscore_ok(s):
        return 0.0, "invalid syntax"
    clean = s.replace("_", "")
    try:
        v = float.fromhex(clean) if hexa else float(clean)
    except OverflowError:
        v = math.inf
    if math.isinf(v):
        return (-math.inf if clean.startswith("-") else math.inf), "value out of range"
    return v, None


# ---------------------------------------------------------------------------------------------
# strconv.FormatFloat and Go's fmt: how Go prints values, which Prometheus users see constantly
# ({{ $value }} is fmt's %v of a float64: the shortest digits that round-trip, in exponent form when
# the decimal exponent is below -4 or at least 6, so 123456 but 1.234567e+06 and 1e+06).


def _digits(d: Decimal) -> tuple[str, int]:
    """The significant digits of |d| without trailing zeros, and the decimal point position."""
    _, digit_tuple, exp = d.as_tuple()
    assert isinstance(exp, int)
    s = "".join(map(str, digit_tuple)).lstrip("0")
    if not s:
        return "", 0
    stripped = s.rstrip("0")
    return stripped, len(s) + exp


_CONTEXT = Context(prec=2500)  # enough for every digit of a float64 with 1100 decimals


def _decimal_digits(a: float, fmt: str, prec: int) -> tuple[str, int, bool]:
    """Digits of a >= 0 as strconv chooses them: shortest (prec < 0) or correctly rounded."""
    if prec < 0:
        ds, dp = _digits(Decimal(repr(a)))  # repr is the shortest round-tripping form, like Go's
        return ds, dp, True
    if a == 0:
        return "", 0, False
    exact = Decimal(a)
    if fmt == "f":
        q = exact.quantize(Decimal(1).scaleb(-min(prec, 1100)), ROUND_HALF_EVEN, _CONTEXT)
    else:
        nsig = min(prec + 1 if fmt in "eE" else max(prec, 1), 800)
        q = exact.quantize(Decimal(1).scaleb(exact.adjusted() - nsig + 1), ROUND_HALF_EVEN, _CONTEXT)
    ds, dp = _digits(q)
    return ds, dp, False


def _fmt_e(d: str, dp: int, prec: int, ch: str) -> str:
    out = d[:1] or "0"
    if prec > 0:
        out += "." + d[1:prec + 1].ljust(prec, "0")
    exp = dp - 1 if d else 0
    sign = "-" if exp < 0 else "+"
    return f"{out}{ch}{sign}{abs(exp):02d}"


def _fmt_f(d: str, dp: int, prec: int) -> str:
    out = (d[:dp].ljust(dp, "0")) if dp > 0 else "0"
    if prec > 0:
        out += "." + "".join(d[j] if 0 <= j < len(d) else "0" for j in range(dp, dp + prec))
    return out


def _fmt_b(a: float) -> str:
    bits = struct.unpack(">Q", struct.pack(">d", a))[0]
    exp, mant = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023 + 52
    return f"{mant}p{'+' if exp >= 0 else ''}{exp}"


def _fmt_x(a: float, prec: int, fmt: str) -> str:
    bits = struct.unpack(">Q", struct.pack(">d", a))[0]
    exp, mant = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023
    if mant == 0:
        exp = 0
    mask = (1 << 64) - 1
    mant <<= 60 - 52
    while mant and not mant & (1 << 60):
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    digits = "0123456789abcdef" if fmt == "x" else "0123456789ABCDEF"
    out = "0" + fmt + "01"[(mant >> 60) & 1]
    mant = (mant << 4) & mask
    if prec < 0 and mant:
        out += "."
        while mant:
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    elif prec > 0:
        out += "."
        for _ in range(prec):
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    return out + ("p" if fmt == "x" else "P") + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"


def _format_float(v: float, fmt: str, prec: int) -> str:
    """strconv.FormatFloat(v, fmt, prec, 64)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    neg = math.copysign(1.0, v) < 0
    a = abs(v)
    if fmt == "b":
        body = _fmt_b(a)
    elif fmt in "xX":
        body = _fmt_x(a, prec, fmt)
    else:
        d, dp, shortest = _decimal_digits(a, fmt, prec)
        nd = len(d)
        if shortest:
            prec = {"e": max(nd - 1, 0), "E": max(nd - 1, 0), "f": max(nd - dp, 0)}.get(fmt, nd)
        if fmt in "eE":
            body = _fmt_e(d, dp, prec, fmt)
        elif fmt == "f":
            body = _fmt_f(d, dp, prec)
        else:  # g, G: %e for exponents < -4 or >= the precision (6 for shortest), else %f
            eprec = 6 if shortest else (nd if prec > nd >= dp else prec)
            exp = dp - 1
            if exp < -4 or exp >= eprec:
                body = _fmt_e(d, dp, min(prec, nd) - 1, "e" if fmt == "g" else "E")
            else:
                body = _fmt_f(d, dp, max((nd if prec > dp else prec) - dp, 0))
    return ("-" if neg else "") + body


@dataclass
class _Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    plus_v: bool = False
    sharp_v: bool = False
    wid: int = 0
    wid_present: bool = False
    prec: int = 0
    prec_present: bool = False


class _Printer:
    """Go's fmt.pp and fmt.fmt: one Sprint/Sprintf call."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.f = _Flags()
        self.arg: _Value = None

    def text(self) -> str:
        return "".join(self.buf)

    def write_padding(self, n: int) -> None:
        if n > 0:
            self.buf.append(("0" if self.f.zero else " ") * n)

    def pad(self, s: str) -> None:
        f = self.f
        if not f.wid_present or f.wid == 0:
            self.buf.append(s)
        elif f.minus:
            self.buf.append(s)
            self.write_padding(f.wid - len(s))
        else:
            self.write_padding(f.wid - len(s))
            self.buf.append(s)

    def pad_unzeroed(self, s: str) -> None:
        zero, self.f.zero = self.f.zero, False
        self.pad(s)
        self.f.zero = zero

    def bad_verb(self, verb: str) -> None:
        self.buf.append(f"%!{verb}(")
        if self.arg is not None:
            self.buf.append(_type_name(self.arg) + "=")
            self.print_arg(self.arg, "v")
        else:
            self.buf.append("<nil>")
        self.buf.append(")")

    def print_arg(self, arg: _Value, verb: str) -> None:
        self.arg = arg
        if arg is None:
            if verb in "Tv":
                self.pad("<nil>")
            else:
                self.bad_verb(verb)
        elif verb == "T":
            self.fmt_s(_type_name(arg))
        elif verb == "p":
            self.bad_verb(verb)
        else:
            self.print_value(arg, verb, 0)

    def print_value(self, v: _Value, verb: str, depth: int) -> None:
        if depth > 0:
            self.arg = v
        f = self.f
        if isinstance(v, bool):
            if verb in "tv":
                self.pad("true" if v else "false")
            else:
                self.bad_verb(verb)
        elif isinstance(v, int):
            self.fmt_integer(v, not isinstance(v, _Byte), verb)
        elif isinstance(v, float):
            if verb == "v":
                self.fmt_float(v, "g", -1)
            elif verb in "bgGxX":
                self.fmt_float(v, verb, -1)
            elif verb in "feEF":
                self.fmt_float(v, verb, 6)
            else:
                self.bad_verb(verb)
        elif isinstance(v, str):
            self.fmt_string(v, verb)
        elif isinstance(v, dict):
            self.buf.append("map[string]string{" if f.sharp_v else "map[")
            for i, k in enumerate(sorted(v)):
                if i:
                    self.buf.append(", " if f.sharp_v else " ")
                self.print_value(k, verb, depth + 1)
                self.buf.append(":")
                self.print_value(v[k], verb, depth + 1)
            self.buf.append("}" if f.sharp_v else "]")
        elif isinstance(v, _Data):
            self.buf.append(_DATA_TYPE + "{" if f.sharp_v else "{")
            for i, (name, fv) in enumerate(v.fields()):
                if i:
                    self.buf.append(", " if f.sharp_v else " ")
                if f.plus_v or f.sharp_v:
                    self.buf.append(name + ":")
                self.print_value(fv, verb, depth + 1)
            self.buf.append("}")
        else:
            self.buf.append("<nil>")

    def fmt_integer(self, v: int, signed: bool, verb: str) -> None:
        if verb == "v" and self.f.sharp_v and not signed:
            sharp, self.f.sharp = self.f.sharp, True
            self.fmt_int(v, 16, verb, "0123456789abcdefx")
            self.f.sharp = sharp
        elif verb in "vd":
            self.fmt_int(v, 10, verb, "0123456789")
        elif verb in "boOxX":
            base = {"b": 2, "o": 8, "O": 8, "x": 16, "X": 16}[verb]
            self.fmt_int(v, base, verb, "0123456789ABCDEFX" if verb == "X" else "0123456789abcdefx")
        elif verb == "c":
            r = v if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else 0xFFFD
            self.pad(chr(r))
        elif verb == "q":
            self.pad(_quote_rune(v, self.f.plus))
        elif verb == "U":
            self.fmt_unicode(v)
        else:
            self.bad_verb(verb)

    def fmt_int(self, v: int, base: int, verb: str, digits: str) -> None:
        f = self.f
        negative, u = v < 0, abs(v)
        prec = 0
        if f.prec_present:
            prec = f.prec
            if prec == 0 and u == 0:  # %.0d of 0 prints nothing but padding
                zero, f.zero = f.zero, False
                self.write_padding(f.wid)
                f.zero = zero
                return
        elif f.zero and f.wid_present:  # %05d pads with zeros after the sign
            prec = f.wid - (negative or f.plus or f.space)
        out = ""
        while True:
            out = digits[u % base] + out
            u //= base
            if not u:
                break
        out = out.rjust(prec, "0")
        if f.sharp:
            if base == 2:
                out = "0b" + out
            elif base == 8 and out[0] != "0":
                out = "0" + out
            elif base == 16:
                out = "0" + digits[16] + out
        if verb == "O":
            out = "0o" + out
        out = ("-" if negative else "+" if f.plus else " " if f.space else "") + out
        self.pad_unzeroed(out)

    def fmt_unicode(self, v: int) -> None:
        u = v & ((1 << 64) - 1)
        prec = self.f.prec if self.f.prec_present and self.f.prec > 4 else 4
        out = "U+" + f"{u:X}".rjust(prec, "0")
        if self.f.sharp and u <= 0x10FFFF and chr(u).isprintable():
            out += f" '{chr(u)}'"
        self.pad_unzeroed(out)

    def fmt_float(self, v: float, verb: str, prec: int) -> None:
        f = self.f
        if f.prec_present:
            prec = f.prec
        s = _format_float(v, "f" if verb == "F" else verb, prec)
        num = s if s[0] in "+-" else "+" + s
        if f.space and num[0] == "+" and not f.plus:
            num = " " + num[1:]
        if num[1] in "IN":  # infinities and NaN are padded with spaces, never zeros
            if num[1] == "N" and not f.space and not f.plus:
                num = num[1:]
            self.pad_unzeroed(num)
            return
        if f.sharp and verb != "b":  # %#g keeps trailing zeros; %#.0f keeps the point
            num = self.sharp_float(num, verb, prec)
        if f.plus or num[0] != "+":
            if f.zero and f.wid_present and f.wid > len(num):
                self.buf.append(num[0])
                self.write_padding(f.wid - len(num))
                self.buf.append(num[1:])
            else:
                self.pad(num)
        else:
            self.pad(num[1:])

    @staticmethod
    def sharp_float(num: str, verb: str, prec: int) -> str:
        digits = (6 if prec == -1 else prec) if verb in "vgGx" else 0
        tail, has_point, saw_nonzero = "", False, False
        i = 1
        while i < len(num):
            c = num[i]
            if c == ".":
                has_point = True
            elif c in "pP" or (c in "eE" and verb not in "xX"):
                tail, num = num[i:], num[:i]
                break
            else:
                saw_nonzero = saw_nonzero or c != "0"
                digits -= saw_nonzero
            i += 1
        if not has_point:
            if len(num) == 2 and num[1] == "0":
                digits -= 1
            num += "."
        return num + "0" * max(digits, 0) + tail

    def fmt_string(self, s: str, verb: str) -> None:
        f = self.f
        if (verb == "v" and not f.sharp_v) or verb == "s":
            self.fmt_s(s)
        elif verb in "xX":
            self.fmt_sx(s, "0123456789abcdefx" if verb == "x" else "0123456789ABCDEFX")
        elif verb in "vq":
            s = self.truncate(s)
            if f.sharp and _can_backquote(s):
                self.pad("`" + s + "`")
            else:
                self.pad(_go_quote(s, ascii_only=f.plus))
        else:
            self.bad_verb(verb)

    def truncate(self, s: str) -> str:
        return s[:self.f.prec] if self.f.prec_present else s

    def fmt_s(self, s: str) -> None:
        self.pad(self.truncate(s))

    def fmt_sx(self, s: str, digits: str) -> None:
        f = self.f
        b = _utf8(s)
        length = min(len(b), f.prec) if f.prec_present else len(b)
        width = 2 * length
        if width == 0:
            if f.wid_present:
                self.write_padding(f.wid)
            return
        if f.space:
            width = width * (2 if f.sharp else 1) + length - 1
        elif f.sharp:
            width += 2
        if f.wid_present and f.wid > width and not f.minus:
            self.write_padding(f.wid - width)
        out = "0" + digits[16] if f.sharp else ""
        for i in range(length):
            if f.space and i:
                out += " " + ("0" + digits[16] if f.sharp else "")
            out += digits[b[i] >> 4] + digits[b[i] & 15]
        self.buf.append(out)
        if f.wid_present and f.wid > width and f.minus:
            self.write_padding(f.wid - width)


def _sprint(args: Sequence[_Value]) -> str:
    """fmt.Sprint: spaces between operands when neither is a string."""
    p, prev_string = _Printer(), False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i and not is_string and not prev_string:
            p.buf.append(" ")
        p.print_arg(arg, "v")
        prev_string = is_string
    return p.text()


def _sprintln(args: Sequence[_Value]) -> str:
    p = _Printer()
    for i, arg in enumerate(args):
        if i:
            p.buf.append(" ")
        p.print_arg(arg, "v")
    return p.text() + "\n"


def _parsenum(s: str, i: int) -> tuple[int, bool, int]:
    num, isnum = 0, False
    while i < len(s) and "0" <= s[i] <= "9":
        if num > 1_000_000:
            return 0, False, len(s)
        num, isnum, i = num * 10 + ord(s[i]) - 48, True, i + 1
    return num, isnum, i


def _sprintf(fmt: str, args: Sequence[_Value]) -> str:
    """fmt.Sprintf, including its in-band complaints (%!d(string=x), %!d(MISSING), %!(EXTRA ...))."""
    p, end, argnum, reordered = _Printer(), len(fmt), 0, False

    def arg_number(argnum: int, i: int) -> tuple[int, int, bool, bool]:
        """An explicit [n] argument index at i: (argnum, i, found, good)."""
        nonlocal reordered
        if i >= end or fmt[i] != "[":
            return argnum, i, False, True
        reordered = True
        close = fmt.find("]", i + 1)
        if end - i < 3 or close < 0:
            return argnum, i + 1, False, False
        n, ok, newi = _parsenum(fmt, i + 1)
        if not ok or newi != close:
            return argnum, close + 1, False, False
        if 0 <= n - 1 < len(args):
            return n - 1, close + 1, True, True
        return argnum, close + 1, True, False

    def int_from_arg(argnum: int) -> tuple[int, bool, int]:
        if argnum >= len(args):
            return 0, False, argnum
        a = args[argnum]
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) <= 1_000_000:
            return a, True, argnum + 1
        return 0, False, argnum + 1

    i = 0
    while i < end:
        good = True
        j = fmt.find("%", i)
        if j < 0:
            p.buf.append(fmt[i:])
            break
        p.buf.append(fmt[i:j])
        i = j + 1
        f = p.f = _Flags()
        while i < end and fmt[i] in "#0+- ":
            c = fmt[i]
            if c == "#":
                f.sharp = True
            elif c == "0":
                f.zero = not f.minus
            elif c == "+":
                f.plus = True
            elif c == "-":
                f.minus, f.zero = True, False
            else:
                f.space = True
            i += 1
        argnum, i, after_index, ok = arg_number(argnum, i)
        good = good and ok
        if i < end and fmt[i] == "*":
            f.wid, f.wid_present, argnum = int_from_arg(argnum)
            i += 1
            if not f.wid_present:
                p.buf.append("%!(BADWIDTH)")
            if f.wid < 0:
                f.wid, f.minus, f.zero = -f.wid, True, False
            after_index = False
        else:
            f.wid, f.wid_present, i = _parsenum(fmt, i)
            if after_index and f.wid_present:
                good = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                good = False
            argnum, i, after_index, ok = arg_number(argnum, i)
            good = good and ok
            if i < end and fmt[i] == "*":
                f.prec, f.prec_present, argnum = int_from_arg(argnum)
                i += 1
                if f.prec < 0:
                    f.prec, f.prec_present = 0, False
                if not f.prec_present:
                    p.buf.append("%!(BADPREC)")
                after_index = False
            else:
                f.prec, f.prec_present, i = _parsenum(fmt, i)
                f.prec_present = True
        if not after_index:
            argnum, i, after_index, ok = arg_number(argnum, i)
            good = good and ok
        if i >= end:
            p.buf.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            p.buf.append("%")
        elif not good:
            p.buf.append(f"%!{verb}(BADINDEX)")
        elif argnum >= len(args):
            p.buf.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                f.sharp_v, f.sharp, f.plus_v, f.plus = f.sharp, False, f.plus, False
            p.print_arg(args[argnum], verb)
            argnum += 1
    if not reordered and argnum < len(args):
        p.f = _Flags()
        p.buf.append("%!(EXTRA ")
        for k, arg in enumerate(args[argnum:]):
            if k:
                p.buf.append(", ")
            if arg is None:
                p.buf.append("<nil>")
            else:
                p.buf.append(_type_name(arg) + "=")
                p.print_arg(arg, "v")
        p.buf.append(")")
    return p.text()


def _fmt_g4(v: float) -> str:
    if type(v) is float and math.isfinite(v):
        # Go's %.4g and C's agree on every finite float64 (a test compares them), and the humanize
        # functions run for every active alert at every evaluation: skip the fmt port here.
        return format(v, ".4g")
    return _sprintf("%.4g", [v])


# ---------------------------------------------------------------------------------------------
# The functions: Go's builtins and Prometheus 2.42's, with Go's argument types. A function that
# returns an error in Go raises _CallError, which becomes "error calling NAME: message".


class _CallError(Exception):
    pass


@dataclass(frozen=True)
class _Func:
    params: tuple[str, ...]  # "string", "any" (interface{}) or "value" (reflect.Value, builtins only)
    variadic: bool
    impl: Callable[..., _Value]


def _basic_kind(v: _Value) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, _Byte):
        return "uint"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return None


def _eq(a: _Value, *rest: _Value) -> bool:
    if not rest:
        raise _CallError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in rest:
        k2 = _basic_kind(b)
        if k1 != k2:
            if {k1, k2} == {"int", "uint"}:
                truth = a == b
            elif a is not None and b is not None:
                raise _CallError("incompatible types for comparison")
            else:
                truth = False
        elif k1 is None:  # maps, the data struct, nil
            if a is None or b is None:
                truth = (a is None) == (b is None)
            elif type(a) is not type(b):
                raise _CallError(f"non-comparable types {_sprintf('%s', [a])}: {_type_name(a)}, "
                                 f"{_type_name(b)}: {_sprint([b])}")
            else:
                raise _CallError(f"non-comparable type {_sprintf('%s', [b])}: {_type_name(b)}")
        else:
            truth = a == b
        if truth:
            return True
    return False


def _lt(a: _Value, b: _Value) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 is None or k2 is None:
        raise _CallError("invalid type for comparison")
    if k1 != k2:
        if {k1, k2} == {"int", "uint"}:
            return bool(a < b)  # type: ignore[operator]
        raise _CallError("incompatible types for comparison")
    if k1 == "bool":
        raise _CallError("invalid type for comparison")
    return bool(a < b)  # type: ignore[operator]


def _le(a: _Value, b: _Value) -> bool:
    return _lt(a, b) or _eq(a, b)


def _len(v: _Value) -> int:
    if isinstance(v, str):
        return len(_utf8(v))
    if isinstance(v, dict):
        return len(v)
    if v is None:
        raise _CallError("reflect: call of reflect.Value.Type on zero Value")
    raise _CallError(f"len of type {_type_name(v)}")


def _index_arg(index: _Value, cap: int) -> int:
    if index is None:
        raise _CallError("cannot index slice/array with nil")
    if not isinstance(index, int) or isinstance(index, bool):
        raise _CallError(f"cannot index slice/array with type {_type_name(index)}")
    if index < 0 or index > cap:
        raise _CallError(f"index out of range: {index}")
    return int(index)


def _index(item: _Value, *indexes: _Value) -> _Value:
    if item is None:
        raise _CallError("index of untyped nil")
    for index in indexes:
        if isinstance(item, str):
            b = _utf8(item)
            x = _index_arg(index, len(b))
            if x == len(b):
                raise _CallError("reflect: string index out of range")
            item = _Byte(b[x])
        elif isinstance(item, dict):
            if index is None:
                raise _CallError("value is nil; should be of type string")
            if type(index) is not str:
                raise _CallError(f"value has type {_type_name(index)}; should be string")
            item = item.get(index, "")
        else:
            raise _CallError(f"can't index item of type {_type_name(item)}")
    return item


def _slice(item: _Value, *indexes: _Value) -> _Value:
    if item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if not isinstance(item, str):
        raise _CallError(f"can't slice item of type {_type_name(item)}")
    if len(indexes) == 3:
        raise _CallError("cannot 3-index slice a string")
    b = _utf8(item)
    idx = [0, len(b)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(b))
    if idx[0] > idx[1]:
        raise _CallError(f"invalid slice index: {idx[0]} > {idx[1]}")
    out = _from_utf8(b[idx[0]:idx[1]])
    return _HTML(out) if isinstance(item, _HTML) else out


def _eval_args(args: Sequence[_Value]) -> str:
    """text/template's evalArgs for html, js and urlquery."""
    if len(args) == 1 and type(args[0]) is str:
        return args[0]
    return _sprint(["<no value>" if a is None else a for a in args])


def _html(*args: _Value) -> str:
    table = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;", "\0": "\ufffd"}
    return "".join(table.get(c, c) for c in _eval_args(args))


def _js(*args: _Value) -> str:
    out = []
    for c in _eval_args(args):
        if c in "\\'\"":
            out.append("\\" + c)
        elif c in "<>&=":
            out.append(f"\\u{ord(c):04X}")
        elif c < " ":
            out.append(f"\\u00{ord(c):02X}")
        elif c >= "\x80" and not c.isprintable():
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _urlquery(*args: _Value) -> str:
    safe = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
    return "".join("+" if b == 32 else chr(b) if b in safe else f"%{b:02X}" for b in _utf8(_eval_args(args)))


def _to_float(v: _Value) -> float:
    """Prometheus's convertToFloat: float64, int, or a string strconv.ParseFloat accepts."""
    if type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    if type(v) is str:
        f, err = _go_parse_float(v)
        if err:
            raise _CallError(f"strconv.ParseFloat: parsing {_go_quote(v)}: {err}")
        return f
    raise _CallError(f"can't convert {_type_name(v)} to float")


def _go_int64(x: float) -> int:
    """Go's int64(x) on amd64: out-of-range conversions give the minimum int64."""
    return int(x) if -(2.0**63) <= x < 2.0**63 else -(2**63)


def _go_divmod(a: int, b: int) -> tuple[int, int]:
    """Go's integer / and %, which truncate towards zero."""
    q = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    return q, a - b * q


def _humanize(v: _Value) -> str:
    x = _to_float(v)
    if x == 0 or math.isnan(x) or math.isinf(x):
        return _fmt_g4(x)
    prefix = ""
    if abs(x) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(x) < 1000:
                break
            prefix, x = p, x / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(x) >= 1:
                break
            prefix, x = p, x * 1000
    return _fmt_g4(x) + prefix


def _humanize1024(v: _Value) -> str:
    x = _to_float(v)
    if abs(x) <= 1 or math.isnan(x) or math.isinf(x):
        return _fmt_g4(x)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(x) < 1024:
            break
        prefix, x = p, x / 1024
    return _fmt_g4(x) + prefix


def _humanize_duration(v: _Value) -> str:
    x = _to_float(v)
    if math.isnan(x) or math.isinf(x):
        return _fmt_g4(x)
    if x == 0:
        return _fmt_g4(x) + "s"
    if abs(x) >= 1:
        sign = "-" if x < 0 else ""
        x = abs(x)
        total = _go_int64(x)
        minutes_total, seconds = _go_divmod(total, 60)
        hours_total, minutes = _go_divmod(minutes_total, 60)
        days, hours = _go_divmod(hours_total, 24)
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_fmt_g4(x)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(x) >= 1:
            break
        prefix, x = p, x * 1000
    return f"{_fmt_g4(x)}{prefix}s"


def _humanize_percentage(v: _Value) -> str:
    return _fmt_g4(_to_float(v) * 100) + "%"


def _humanize_timestamp(v: _Value) -> str:
    x = _to_float(v)
    if math.isnan(x) or math.isinf(x):
        return _fmt_g4(x)
    ns = x * 1e9
    if ns > 2.0**63 or ns < -(2.0**63):
        raise _CallError(f"{_sprint([x])} cannot be represented as a nanoseconds timestamp since it overflows int64")
    ms = _go_divmod(_go_int64(ns), 1_000_000)[0]  # model.Time has millisecond precision
    t = datetime(1970, 1, 1) + timedelta(milliseconds=ms)
    frac = f".{t.microsecond // 1000:03d}".rstrip("0").rstrip(".")
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}{frac} +0000 UTC"


def _map_runes(s: str, mapping: Callable[[str], str]) -> str:
    """Go maps case rune by rune (unicode.ToUpper etc.), never to several characters as Python can."""
    out = []
    for c in s:
        m = mapping(c)
        out.append(m if len(m) == 1 else c)
    return "".join(out)


def _upper_rune(c: str) -> str:
    u = c.upper()
    return u if len(u) == 1 else c.title()  # e.g. U+1FB3: Go's simple mapping is its titlecase


def _to_upper(s: str) -> str:
    return _map_runes(s, _upper_rune)


def _to_lower(s: str) -> str:
    return _map_runes(s, lambda c: "i" if c == "\u0130" else c.lower())


def _title(s: str) -> str:
    """strings.Title: upper-case (title-case) the first letter of each word."""
    def separator(c: str) -> bool:
        if c <= "\x7f":
            return not (c.isalnum() or c == "_")
        if c.isalpha() or unicodedata.category(c) == "Nd":
            return False
        return c.isspace()
    out, prev = [], " "
    for c in s:
        out.append(_map_runes(c, str.title) if separator(prev) else c)
        prev = c
    return "".join(out)


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """net.SplitHostPort, or None where it fails."""
    i = hostport.rfind(":")
    if i < 0:
        return None
    j = k = 0
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0 or end + 1 != i:
            return None
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            return None
    if "[" in hostport[j:] or "]" in hostport[k:]:
        return None
    return host, hostport[i + 1:]


def _strip_port(hostport: str) -> str:
    split = _split_host_port(hostport)
    return hostport if split is None else split[0]


def _strip_domain(hostport: str) -> str:
    host, port = _split_host_port(hostport) or (hostport, "")
    try:
        if "%" not in host:
            ipaddress.ip_address(host)
            return hostport
    except ValueError:
        pass
    host = host.split(".")[0]
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_DURATION = re.compile(r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?"
                       r"(?:([0-9]+)s)?(?:([0-9]+)ms)?")
_DURATION_MS = (365 * 86400_000, 7 * 86400_000, 86400_000, 3600_000, 60_000, 1000, 1)


def _parse_duration(s: str) -> float:
    """Prometheus's model.ParseDuration, in seconds."""
    if s == "0":
        return 0.0
    if s == "":
        raise _CallError("empty duration string")
    m = _DURATION.fullmatch(s)
    if m is None:
        raise _CallError(f"not a valid duration string: {_go_quote(s)}")
    ns = sum(int(g) * mult * 1_000_000 for g, mult in zip(m.groups(), _DURATION_MS, strict=True) if g)
    if ns > 2**63 - 1:
        raise _CallError("duration out of range")
    return ns / 1e9


def _match(pattern: str, s: str) -> bool:
    try:
        return compile_go(pattern).matches(s)
    except RegexError as exc:
        raise _CallError(str(exc)) from None


def _re_replace_all(pattern: str, repl: str, text: str) -> str:
    try:
        rx = compile_go(pattern)
    except RegexError as exc:  # Prometheus uses regexp.MustCompile, which panics with this
        quoted = f"`{pattern}`" if _can_backquote(pattern) else _go_quote(pattern)
        raise _CallError(f"regexp: Compile({quoted}): {exc}") from None
    return replace_all(rx, text, repl)


def _short_circuit(*_: _Value) -> _Value:
    raise AssertionError("and/or evaluate their arguments lazily, in _Exec.eval_call")


_S, _A, _V = "string", "any", "value"
_FUNCS: dict[str, _Func] = {
    # Go's builtins
    "and": _Func((_V, _V), True, _short_circuit),
    "or": _Func((_V, _V), True, _short_circuit),
    "not": _Func((_V,), False, lambda v: not _is_true(v)),
    "len": _Func((_V,), False, _len),
    "index": _Func((_V, _V), True, _index),
    "slice": _Func((_V, _V), True, _slice),
    "print": _Func((_A,), True, lambda *a: _sprint(a)),
    "printf": _Func((_S, _A), True, lambda f, *a: _sprintf(f, a)),
    "println": _Func((_A,), True, lambda *a: _sprintln(a)),
    "html": _Func((_A,), True, _html),
    "js": _Func((_A,), True, _js),
    "urlquery": _Func((_A,), True, _urlquery),
    "eq": _Func((_V, _V), True, _eq),
    "ne": _Func((_V, _V), False, lambda a, b: not _eq(a, b)),
    "lt": _Func((_V, _V), False, _lt),
    "le": _Func((_V, _V), False, _le),
    "gt": _Func((_V, _V), False, lambda a, b: not _le(a, b)),  # so NaN is "greater" than anything, as in Go
    "ge": _Func((_V, _V), False, lambda a, b: not _lt(a, b)),
    # Prometheus's
    "humanize": _Func((_A,), False, _humanize),
    "humanize1024": _Func((_A,), False, _humanize1024),
    "humanizeDuration": _Func((_A,), False, _humanize_duration),
    "humanizePercentage": _Func((_A,), False, _humanize_percentage),
    "humanizeTimestamp": _Func((_A,), False, _humanize_timestamp),
    "toUpper": _Func((_S,), False, _to_upper),
    "toLower": _Func((_S,), False, _to_lower),
    "title": _Func((_S,), False, _title),
    "match": _Func((_S, _S), False, _match),
    "reReplaceAll": _Func((_S, _S, _S), False, _re_replace_all),
    "stripPort": _Func((_S,), False, _strip_port),
    "stripDomain": _Func((_S,), False, _strip_domain),
    "safeHtml": _Func((_S,), False, _HTML),
    "parseDuration": _Func((_S,), False, _parse_duration),
}
FUNCTIONS = frozenset(_FUNCS)  # the template functions gpumon supports
_NO_QUERIES = "gpumon evaluates alert templates without a PromQL engine, so templates cannot run queries"
_UNSUPPORTED = {
    "query": _NO_QUERIES,
    **{f: f"it works on the results of query, and {_NO_QUERIES}"
       for f in ("first", "label", "value", "strvalue", "sortByLabel")},
    **{f: "it links into the Prometheus web UI, which gpumon does not have"
       for f in ("graphLink", "tableLink", "pathPrefix", "externalURL")},
    "toTime": "it returns a Go time.Time; use humanizeTimestamp",
    "args": "it only serves {{template}}, which gpumon does not support",
    "call": "templates have no function values to call",
}


# ---------------------------------------------------------------------------------------------
# Execution (text/template/exec.go). `node` is the node Go's state.at() last pointed at: runtime
# errors name it and its position in the prefixed text, as Prometheus's messages do.

_PREFIX = ("{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}"
           "{{$value := .Value}}")


class _ExecError(Exception):
    pass


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


class _Exec:
    def __init__(self, template: Template, data: _Data) -> None:
        self.template = template
        self.vars: list[tuple[str, _Value]] = [
            ("$", data), ("$labels", data.labels), ("$externalLabels", data.external_labels),
            ("$externalURL", data.external_url), ("$value", data.value)]
        self.node: _Node | None = None
        self.out: list[str] = []

    def at(self, node: _Node) -> None:
        self.node = node

    def errorf(self, message: str) -> NoReturn:
        name, text = self.template.name, self.template.text
        if self.node is None:
            raise _ExecError(f"template: {name}: {message}")
        before = text[:self.node.pos]
        newline = before.rfind("\n")
        if newline < 0:  # positions are byte offsets in the text after Prometheus's prefix
            line, column = 1, len(_PREFIX) + len(_utf8(before))
        else:
            line, column = before.count("\n") + 1, len(_utf8(before[newline + 1:]))
        raise _ExecError(f"template: {name}:{line}:{column}: executing {_go_quote(name)} at <{self.node}>: {message}")

    # -- walking the tree

    def walk(self, dot: _Value, node: _Node) -> None:
        self.at(node)
        if isinstance(node, _Text):
            self.out.append(node.text)
        elif isinstance(node, _Action):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:  # declarations print nothing
                self.at(node)
                self.out.append("<no value>" if value is None else _sprint([value]))
        elif isinstance(node, _List):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, _Control):
            self.walk_range(dot, node) if node.kind == "range" else self.walk_if_or_with(dot, node)
        elif isinstance(node, _Break):
            raise _BreakLoop
        elif isinstance(node, _Continue):
            raise _ContinueLoop

    def walk_if_or_with(self, dot: _Value, node: _Control) -> None:
        mark = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if _is_true(value):
                self.walk(value if node.kind == "with" else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_range(self, dot: _Value, node: _Control) -> None:
        self.at(node)
        outer = len(self.vars)
        try:
            value = self.eval_pipeline(dot, node.pipe)
            mark = len(self.vars)
            if isinstance(value, dict) and value:
                for key in sorted(value):  # Go ranges over maps in key order
                    if len(node.pipe.decl) > 0:
                        self.vars[-1] = (self.vars[-1][0], value[key])
                    if len(node.pipe.decl) > 1:
                        self.vars[-2] = (self.vars[-2][0], key)
                    try:
                        self.walk(value[key], node.list)
                    except _ContinueLoop:
                        pass
                    finally:
                        del self.vars[mark:]
                return
            if value is not None and not isinstance(value, dict):
                self.errorf(f"range can't iterate over {_sprint([value])}")
            if node.else_list is not None:
                self.walk(dot, node.else_list)
        except _BreakLoop:
            pass
        finally:
            del self.vars[outer:]

    # -- evaluating pipelines

    def eval_pipeline(self, dot: _Value, pipe: _Pipe) -> _Value:
        self.at(pipe)
        value: _Value | _Missing = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        assert not isinstance(value, _Missing)  # the parser requires a command
        for var in pipe.decl:
            if pipe.is_assign:
                self.set_var(var.idents[0], value)
            else:
                self.vars.append((var.idents[0], value))
        return value

    def set_var(self, name: str, value: _Value) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        self.errorf(f"undefined variable: {name}")

    def var_value(self, name: str) -> _Value:
        for var, value in reversed(self.vars):
            if var == name:
                return value
        self.errorf(f"undefined variable: {name}")

    def not_a_function(self, args: list[_Node] | None, final: _Value | _Missing) -> None:
        if args is not None and (len(args) > 1 or not isinstance(final, _Missing)):
            self.errorf(f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: _Value, cmd: _Command, final: _Value | _Missing) -> _Value:
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, _Chain):
            return self.eval_chain_node(dot, first, cmd.args, final)
        if isinstance(first, _Identifier):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _Variable):
            return self.eval_variable_node(dot, first, cmd.args, final)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Bool):
            return first.value
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Nil):
            self.errorf("nil is not a command")
        if isinstance(first, _Number):
            return self.ideal_constant(first)
        if isinstance(first, _String):
            return first.text
        self.errorf(f"can't evaluate command {_go_quote(str(first))}")

    def ideal_constant(self, n: _Number) -> _Value:
        """A number literal where no type is expected: float64 if it looks like one, else int."""
        self.at(n)
        hex_int = n.text[:2].lower() == "0x" and "p" not in n.text.lower()
        if n.is_float and not hex_int and not n.is_char and any(c in n.text for c in ".eEpP"):
            return n.float_value
        if n.is_int:
            return n.int_value
        self.errorf(f"{n.text} overflows int")

    def eval_field_node(self, dot: _Value, node: _Field, args: list[_Node] | None, final: _Value | _Missing) -> _Value:
        self.at(node)
        return self.eval_field_chain(dot, dot, node, node.idents, args, final)

    def eval_chain_node(self, dot: _Value, node: _Chain, args: list[_Node] | None, final: _Value | _Missing) -> _Value:
        self.at(node)
        receiver = self.eval_arg(dot, None, node.node)
        return self.eval_field_chain(dot, receiver, node, node.fields, args, final)

    def eval_variable_node(self, dot: _Value, node: _Variable, args: list[_Node] | None,
                           final: _Value | _Missing) -> _Value:
        self.at(node)
        value = self.var_value(node.idents[0])
        if len(node.idents) == 1:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(dot, value, node, node.idents[1:], args, final)

    def eval_field_chain(self, dot: _Value, receiver: _Value, node: _Node, idents: list[str],
                         args: list[_Node] | None, final: _Value | _Missing) -> _Value:
        for name in idents[:-1]:
            receiver = self.eval_field(name, None, _MISSING, receiver)
        return self.eval_field(idents[-1], args, final, receiver)

    def eval_field(self, name: str, args: list[_Node] | None, final: _Value | _Missing, receiver: _Value) -> _Value:
        if receiver is None:
            return None  # missingkey=zero: a field of nothing is nothing
        has_args = (args is not None and len(args) > 1) or not isinstance(final, _Missing)
        if isinstance(receiver, _Data):
            for field_name, value in receiver.fields():
                if field_name == name:
                    if has_args:
                        self.errorf(f"{name} has arguments but cannot be invoked as function")
                    return value
        elif isinstance(receiver, dict):
            if has_args:
                self.errorf(f"{name} is not a method but has arguments")
            return receiver.get(name, "")  # missingkey=zero: a missing label is ""
        self.errorf(f"can't evaluate field {name} in type {_type_name(receiver)}")

    def eval_function(self, dot: _Value, node: _Identifier, cmd: _Node, args: list[_Node] | None,
                      final: _Value | _Missing) -> _Value:
        self.at(node)
        return self.eval_call(dot, node.name, _FUNCS[node.name], cmd, args[1:] if args is not None else [], final)

    def eval_call(self, dot: _Value, name: str, fn: _Func, cmd: _Node, args: list[_Node],
                  final: _Value | _Missing) -> _Value:
        num_in = len(args) + (not isinstance(final, _Missing))
        num_fixed = len(fn.params) - 1 if fn.variadic else len(args)
        if fn.variadic and num_in < num_fixed:
            self.errorf(f"wrong number of args for {name}: want at least {len(fn.params) - 1} got {len(args)}")
        if not fn.variadic and num_in != len(fn.params):
            self.errorf(f"wrong number of args for {name}: want {len(fn.params)} got {num_in}")
        if name in ("and", "or"):  # short-circuit: stop at the first false (and) or true (or)
            value: _Value = None
            for arg in args:
                value = self.eval_arg(dot, _V, arg)
                if _is_true(value) == (name == "or"):
                    return value
            if not isinstance(final, _Missing):
                value = self.validate_type(final, _V)
            return value
        argv = [self.eval_arg(dot, fn.params[min(i, len(fn.params) - 1)], arg) for i, arg in enumerate(args)]
        if not isinstance(final, _Missing):
            param = fn.params[num_in - 1] if not fn.variadic or num_in - 1 < num_fixed else fn.params[-1]
            argv.append(self.validate_type(final, param))
        try:
            return fn.impl(*argv)
        except _CallError as exc:
            self.at(cmd)
            self.errorf(f"error calling {name}: {exc}")

    def eval_arg(self, dot: _Value, param: str | None, node: _Node) -> _Value:
        self.at(node)
        if isinstance(node, _Dot):
            return self.validate_type(dot, param)
        if isinstance(node, _Nil):
            if param in (_A, _V):
                return None
            self.errorf(f"cannot assign nil to {param}")
        if isinstance(node, _Field):
            return self.validate_type(self.eval_field_node(dot, node, [node], _MISSING), param)
        if isinstance(node, _Variable):
            return self.validate_type(self.eval_variable_node(dot, node, None, _MISSING), param)
        if isinstance(node, _Pipe):
            return self.validate_type(self.eval_pipeline(dot, node), param)
        if isinstance(node, _Identifier):
            return self.validate_type(self.eval_function(dot, node, node, None, _MISSING), param)
        if isinstance(node, _Chain):
            return self.validate_type(self.eval_chain_node(dot, node, None, _MISSING), param)
        if param == _S:
            if isinstance(node, _String):
                return node.text
            self.errorf(f"expected string; found {node}")
        if isinstance(node, _Bool):
            return node.value
        if isinstance(node, _Number):
            return self.ideal_constant(node)
        if isinstance(node, _String):
            return node.text
        self.errorf(f"can't handle {node} for arg of type {param}")

    def validate_type(self, value: _Value, param: str | None) -> _Value:
        if param == _S:
            if value is None:
                self.errorf("invalid value; expected string")
            if type(value) is not str:
                self.errorf(f"wrong type for value; expected string; got {_type_name(value)}")
        return value


# ---------------------------------------------------------------------------------------------
# The API.


@dataclass(frozen=True)
class Template:
    """A parsed alert template; `render` expands it as Prometheus would."""

    text: str
    name: str
    _root: _List = field(repr=False, compare=False)
    # The output of a template without actions (or just its comments): rendering it needs no data.
    _static: str | None = field(default=None, repr=False, compare=False)

    def render(self, labels: dict[str, str], value: float, external_labels: dict[str, str] | None = None,
               *, external_url: str = "") -> str:
        """The expanded text, or Prometheus's `<error expanding template: ...>` when execution fails."""
        if self._static is not None:
            return self._static
        data = _Data(dict(labels), dict(external_labels or {}), external_url, float(value))
        state = _Exec(self, data)
        try:
            state.walk(data, self._root)
        except _ExecError as exc:
            return f"<error expanding template: error executing template {self.name}: {exc}>"
        except RecursionError:
            return f"<error expanding template: error executing template {self.name}: template nests too deeply>"
        return "".join(state.out)


def compile_template(text: str, alert_name: str = "") -> Template:
    """Parse an alert label or annotation template; TemplateError if Prometheus would refuse it,
    or if it needs what gpumon does not support (queries, named templates, ...).

    `alert_name` only names the template in runtime error texts, as Prometheus does
    ("__alert_<alertname>"), so that those match Prometheus's character for character."""
    try:
        root = _Parser(text).parse()
    except RecursionError:
        raise TemplateError("template nests too deeply") from None
    texts = [n.text for n in root.nodes if isinstance(n, _Text)]
    static = "".join(texts) if len(texts) == len(root.nodes) else None
    return Template(text, "__alert_" + alert_name, root, static)

