"""Parse tree and parser of Go's text/template (text/template/parse/node.go and parse.go)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from gpumon.rules.gotemplate.functions import _FUNCS, _UNSUPPORTED
from gpumon.rules.gotemplate.lex import _Lexer, _Token
from gpumon.rules.gotemplate.strconv import _go_parse_float, _go_parse_int, _go_quote, _go_unquote, _unquote_char
from gpumon.rules.gotemplate.values import _error_at

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


