"""YAML files validated by pydantic, with errors that name the file, line and key.

PyYAML's composer keeps the position of every node; we keep a map from key path to line while
building plain data, and translate pydantic's error locations back through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

M = TypeVar("M", bound=pydantic.BaseModel)
KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """Invalid user input; `str()` is the full message for the user, one problem per line."""


# Tags of plain scalars, whose source text is used as a mapping key: `on:`, `no:` or `010:` are the
# keys "on", "no" and "010", not True, False and 8 (a user called "no" must stay "no").
_KEY_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp"))
_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_NODES = 100_000  # far beyond any real file; stops alias bombs ("billion laughs")


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file into plain data plus the (1-based) line of every key path."""
    try:
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


def validate(model: type[M], data: Any, path: Path | str, lines: dict[KeyPath, int] | None = None,
             origins: dict[KeyPath, str] | None = None) -> M:
    """Validate data against a model; every error names file:line and the dotted key.

    `origins` names where a value came from when it was not the file (a command-line flag).
    """
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            key = dotted(loc)
            origin = (origins or {}).get(loc)
            if origin:
                where = origin
            else:
                line = _line_of(loc, lines or {})
                where = f"{path}:{line}" if line else str(path)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{where}: {key}: {msg.removeprefix('Value error, ')}")
        raise ConfigError("\n".join(problems)) from None


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
