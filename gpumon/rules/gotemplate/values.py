"""Go values as a template sees them (Python values standing for Go's), and the load error type."""

from __future__ import annotations

from dataclasses import dataclass


class TemplateError(Exception):
    """A template that Prometheus would refuse to load, or that uses what gpumon does not support."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(f"line {line}, column {column}: {message}" if line else message)
        self.message, self.line, self.column = message, line, column


def _error_at(text: str, pos: int, message: str) -> TemplateError:
    line = text.count("\n", 0, pos) + 1
    return TemplateError(message, line, pos - (text.rfind("\n", 0, pos) + 1) + 1)


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


