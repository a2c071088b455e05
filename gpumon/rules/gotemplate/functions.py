"""The template functions: Go's builtins and Prometheus 2.42's, with Go's argument types."""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gpumon.regex import RegexError, compile_go, replace_all
from gpumon.rules.gotemplate.fmt import _fmt_g4, _sprint, _sprintf, _sprintln
from gpumon.rules.gotemplate.strconv import _can_backquote, _go_parse_float, _go_quote
from gpumon.rules.gotemplate.values import _HTML, _Byte, _from_utf8, _is_true, _type_name, _utf8, _Value

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


