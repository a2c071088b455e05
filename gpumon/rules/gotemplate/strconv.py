"""Go's strconv: string literal quoting and unquoting, integer and float parsing."""

from __future__ import annotations

import math
import re

from gpumon.rules.gotemplate.values import _from_utf8

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


