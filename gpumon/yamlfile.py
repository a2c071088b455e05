"""YAML files validated against msgspec structs, with errors that name the file, line and key.

PyYAML's composer keeps the position of every node; we keep a map from key path to line while
building plain data, and translate the key path of every problem back through it.

The structs (msgspec.Struct: frozen, forbid_unknown_fields, renamed fields) describe the files;
`validate` walks them itself rather than calling msgspec.convert on the whole document, because
msgspec stops at the first error and we report every problem, one per line. Scalars are converted
by msgspec; `Annotated[T, Before(fn)]` parses the raw value with fn, `Annotated[T, After(fn)]`
checks the converted one, and a struct's `__post_init__` checks the struct as a whole (raising
`FieldError` to name one of its fields instead).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgspec
import yaml

S = TypeVar("S", bound=msgspec.Struct)
KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """Invalid user input; `str()` is the full message for the user, one problem per line."""


# Tags of plain scalars, whose source text is used as a mapping key: `on:`, `no:` or `010:` are the
# keys "on", "no" and "010", not True, False and 8 (a user called "no" must stay "no").
_KEY_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_NODES = 100_000  # far beyond any real file; stops alias bombs ("billion laughs")


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file into plain data plus the (1-based) line of every key path. Only a regular
    file is read: a FIFO or a device would block (or never end)."""
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; has a position, not a mark
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{path}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    if node is None:
        return {}, {}
    builder = _Builder(path)
    try:
        return builder.build(node, ()), builder.lines
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None


class _Builder:
    """Builds plain data from composed nodes, recording the line of every key path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[KeyPath, int] = {}
        self.loader = yaml.SafeLoader("")
        self.open: set[int] = set()  # ids of the collections being built: an alias to one is a cycle
        self.count = 0

    def where(self, node: yaml.Node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def build(self, node: yaml.Node, at: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(f"{self.where(node)}: too many values (more than {MAX_NODES}, counting aliases)")
        self.lines.setdefault(at, node.start_mark.line + 1)  # a key's line is already there
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self.open:
                raise ConfigError(f"{self.where(node)}: an alias refers to a value that contains it")
            self.open.add(id(node))
            try:
                return self._mapping(node, at) if isinstance(node, yaml.MappingNode) else [
                    self.build(item, (*at, i)) for i, item in enumerate(node.value)]
            finally:
                self.open.discard(id(node))
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{self.where(node)}: {problem}") from None
        except Exception:  # a malformed !!int, !!float, !!timestamp ... raises ValueError and others
            raise ConfigError(f"{self.where(node)}: {node.value!r} is not a valid {node.tag.rpartition(':')[2]}") \
                from None

    def _mapping(self, node: yaml.MappingNode, at: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise ConfigError(f"{self.where(key_node)}: merge keys (<<) are not supported")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _KEY_TAGS:
                raise ConfigError(f"{self.where(key_node)}: keys must be plain scalars")
            key = str(key_node.value)
            child = (*at, key)
            if key in out:
                raise ConfigError(f"{self.where(key_node)}: {dotted(child)}: duplicate key")
            self.lines[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
        return out


class Before:
    """`Annotated[T, Before(fn)]`: fn(raw value) gives the value; its ValueError is the problem."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn


class After:
    """`Annotated[T, After(fn)]`: fn(value of type T) checks (or replaces) it; its ValueError is the problem."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn


class FieldError(ValueError):
    """Raised by a struct's __post_init__ to report a problem at one of its fields (by attribute name).

    `uses` names the other fields the check read: it is also reported when other fields of the struct
    are invalid, as long as none of these is.
    """

    def __init__(self, field: str, message: str, uses: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.uses = uses


def validate(model: type[S], data: Any, path: Path | str, lines: dict[KeyPath, int] | None = None,
             origins: dict[KeyPath, str] | None = None) -> S:
    """Validate data against a struct type; every problem names file:line and the dotted key.

    `origins` names where a value came from when it was not the file (a command-line flag).
    """
    checker = _Checker()
    try:
        result = checker.value(model, data, ())
    except RecursionError:  # routes in routes in routes ...: the YAML parsed, validating it went deeper
        raise ConfigError(f"{path}: nested too deeply") from None
    if not checker.problems:
        assert isinstance(result, model)
        return result
    problems = []
    for loc, msg in checker.problems:
        origin = (origins or {}).get(loc)
        if origin:
            where = origin
        else:
            line = _line_of(loc, lines or {})
            where = f"{path}:{line}" if line else str(path)
        problems.append(f"{where}: {dotted(loc)}: {msg}")
    raise ConfigError("\n".join(problems)) from None


class _Bad:
    """What a value with problems (already recorded) validates to."""


_BAD = _Bad()
_NONE = type(None)
_KINDS = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
_FIELDS: dict[type[msgspec.Struct], dict[str, msgspec.structs.FieldInfo]] = {}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _fields(model: type[msgspec.Struct]) -> dict[str, msgspec.structs.FieldInfo]:
    """A struct's fields by the key that names them in a file (the alias, e.g. `continue`)."""
    fields = _FIELDS.get(model)
    if fields is None:
        fields = _FIELDS[model] = {f.encode_name: f for f in msgspec.structs.fields(model)}
    return fields


class _Checker:
    def __init__(self) -> None:
        self.problems: list[tuple[KeyPath, str]] = []

    def fail(self, at: KeyPath, message: str) -> _Bad:
        self.problems.append((at, message))
        return _BAD

    def call(self, fn: Callable[[Any], Any], value: Any, at: KeyPath) -> Any:
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            return self.fail(at, str(exc))

    def value(self, tp: Any, value: Any, at: KeyPath) -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            base, *meta = get_args(tp)
            for m in meta:
                if isinstance(m, Before):
                    return self.call(m.fn, value, at)
            value = self.value(base, value, at)
            for m in meta:
                if isinstance(m, After) and value is not _BAD:
                    value = self.call(m.fn, value, at)
            return value
        if origin is Union or origin is types.UnionType:
            args = get_args(tp)
            if value is None and _NONE in args:
                return None
            rest = tuple(a for a in args if a is not _NONE)
            if len(rest) == 1:
                return self.value(rest[0], value, at)
            return self.scalar(Union[rest], value, at)  # noqa: UP007 - built at run time
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self.struct(tp, value, at)
        if origin is list:
            if not isinstance(value, (list, tuple)):
                return self.fail(at, f"Expected `list`, got `{_kind(value)}`")
            (item,) = get_args(tp)
            items = [self.value(item, v, (*at, i)) for i, v in enumerate(value)]
            return _BAD if _BAD in items else items
        if origin is dict:
            if not isinstance(value, dict):
                return self.fail(at, f"Expected `mapping`, got `{_kind(value)}`")
            key_type, value_type = get_args(tp)
            out = {}
            for k, v in value.items():
                key = self.value(key_type, k, (*at, k))
                out[key] = self.value(value_type, v, (*at, k))
            return _BAD if any(k is _BAD or v is _BAD for k, v in out.items()) else out
        if origin is Literal:
            choices = get_args(tp)
            if any(value == c and type(value) is type(c) for c in choices):
                return value
            listed = [repr(c) for c in choices]
            either = f"{', '.join(listed[:-1])} or {listed[-1]}" if len(listed) > 1 else listed[0]
            return self.fail(at, f"{value!r} is not {either}")
        if tp is Path:
            if isinstance(value, (str, os.PathLike)):
                return Path(value)
            return self.fail(at, f"Expected a path (`str`), got `{_kind(value)}`")
        return self.scalar(tp, value, at)

    def scalar(self, tp: Any, value: Any, at: KeyPath) -> Any:
        try:
            return msgspec.convert(value, type=tp, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc).partition(" - at `$")[0]
            return self.fail(at, message.replace("`array`", "`list`").replace("`object`", "`mapping`"))

    def struct(self, model: type[S], value: Any, at: KeyPath) -> S | _Bad:
        if isinstance(value, model):
            return value
        if not isinstance(value, dict):
            return self.fail(at, f"Expected `mapping`, got `{_kind(value)}`")
        fields = _fields(model)
        given: dict[str, Any] = {}
        ok = True
        for key, v in value.items():
            field = fields.get(key) if isinstance(key, str) else None
            if field is None:
                ok = False
                self.fail((*at, key), "unknown key")
                continue
            given[field.name] = self.value(field.type, v, (*at, key))
            ok = ok and given[field.name] is not _BAD
        for key, field in fields.items():
            if field.required and field.name not in given:
                ok = False
                self.fail((*at, key), "required key is missing")
        bad = {name for name, v in given.items() if v is _BAD}
        try:
            result = model(**{name: v for name, v in given.items() if v is not _BAD})
        except FieldError as exc:
            if ok or not bad.intersection((exc.field, *exc.uses)):
                key = next((k for k, f in fields.items() if f.name == exc.field), exc.field)
                self.fail((*at, key), str(exc))
            return _BAD
        except (ValueError, TypeError) as exc:
            # Checks of the whole struct only count when every field is valid (a missing required
            # field is a TypeError from __init__, already reported).
            return self.fail(at, str(exc)) if ok else _BAD
        return result if ok else _BAD


def dotted(loc: KeyPath) -> str:
    """A key path as messages show it: `sampler.fast_interval`; odd keys quoted so a line stays one line."""
    def text(key: str | int) -> str:
        s = str(key)
        return s if s and s.isprintable() and s.strip() == s and "." not in s else repr(s)

    return ".".join(text(p) for p in loc) or "(top level)"


def _line_of(loc: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]
