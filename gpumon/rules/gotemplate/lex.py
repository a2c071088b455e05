"""The lexer of Go's text/template (text/template/parse/lex.go)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from gpumon.rules.gotemplate.strconv import _go_quote
from gpumon.rules.gotemplate.values import _utf8

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


