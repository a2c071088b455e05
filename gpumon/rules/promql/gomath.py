"""Go's float semantics where Python's differ: math.Min/Max (NaN wins, an infinity before it),
math.Mod, integer division, strconv's formatting and parsing. Go's own math library (exp, log, the
trigonometric and hyperbolic functions, atan2, pow) is ported in gpumon.rules.promql.golibm."""

from __future__ import annotations

import math
from decimal import Decimal

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def go_max(x: float, y: float) -> float:
    """math.Max: +Inf if either is +Inf, else NaN if either is NaN; Max(+0, -0) is +0."""
    if x == math.inf or y == math.inf:
        return math.inf
    if x != x or y != y:
        return math.nan
    if x == 0 and x == y:
        return y if math.copysign(1.0, x) < 0 else x
    return x if x > y else y


def go_min(x: float, y: float) -> float:
    """math.Min: -Inf if either is -Inf, else NaN if either is NaN; Min(+0, -0) is -0."""
    if x == -math.inf or y == -math.inf:
        return -math.inf
    if x != x or y != y:
        return math.nan
    if x == 0 and x == y:
        return x if math.copysign(1.0, x) < 0 else y
    return x if x < y else y


def go_fmod(x: float, y: float) -> float:
    """math.Mod: NaN for y == 0, an infinite x or a NaN; otherwise C's fmod."""
    if y == 0 or math.isinf(x) or math.isnan(x) or math.isnan(y):
        return math.nan
    return math.fmod(x, y)


def go_div(a: int, b: int) -> int:
    """Go's integer division, which truncates toward zero (Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def float_div(a: float, b: float) -> float:
    """a / b as IEEE 754 (and Go) divide: ±Inf for a non-zero over zero, NaN for 0/0, where Python raises."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def value_text(v: float) -> str:
    """A float in an error or a test failure: Python's repr, with Go's NaN, +Inf and -Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def to_int64(v: float) -> int:
    """Go's int64(v) on amd64: truncation; NaN and out-of-range values become the minimum int64."""
    if v != v or v >= 2.0**63 or v < -(2.0**63):
        return INT64_MIN
    return int(v)


def format_float(v: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): the shortest digits that read back, never an exponent."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    text = format(Decimal(repr(v)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), or None where it fails (Python's float() also takes spaces and `_`)."""
    if not text or text != text.strip() or "_" in text:
        return None
    body = text.lstrip("+-").lower()
    if body.startswith("0x"):
        try:
            return float.fromhex(text)
        except ValueError:
            return None
    if body in ("inf", "infinity", "nan"):
        return float(text)
    if not body or not (body[0].isdigit() or body[0] == "."):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isinf(value) else value  # out of range: ParseFloat fails with ErrRange
