"""Execution of a parsed template (text/template/exec.go), and the API: Template, compile_template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn

from gpumon.rules.gotemplate.fmt import _sprint
from gpumon.rules.gotemplate.functions import _A, _FUNCS, _S, _V, _CallError, _Func
from gpumon.rules.gotemplate.parse import (
    _Action,
    _Bool,
    _Break,
    _Chain,
    _Command,
    _Continue,
    _Control,
    _Dot,
    _Field,
    _Identifier,
    _List,
    _Nil,
    _Node,
    _Number,
    _Parser,
    _Pipe,
    _String,
    _Text,
    _Variable,
)
from gpumon.rules.gotemplate.strconv import _go_quote
from gpumon.rules.gotemplate.values import _MISSING, TemplateError, _Data, _is_true, _Missing, _type_name, _utf8, _Value

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

