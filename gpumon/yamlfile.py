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
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    lines: dict[KeyPath, int] = {}
    if node is None:
        return {}, lines
    return _build(node, (), lines, path, yaml.SafeLoader("")), lines


def _build(node: yaml.Node, at: KeyPath, lines: dict[KeyPath, int], path: Path, loader: yaml.SafeLoader) -> Any:
    lines[at] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int, float, bool)):
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: keys must be plain scalars")
            key = str(key)
            if key in out:
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: duplicate key '{key}'")
            child = (*at, key)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _build(value_node, child, lines, path, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*at, i), lines, path, loader) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: {exc}") from None


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
            key = ".".join(str(p) for p in loc) or "(top level)"
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


def _line_of(loc: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]
