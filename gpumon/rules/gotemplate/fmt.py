"""Go's fmt and strconv.FormatFloat: how Go prints values, which templates show."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal

from gpumon.rules.gotemplate.strconv import _can_backquote, _go_quote, _quote_rune
from gpumon.rules.gotemplate.values import _DATA_TYPE, _Byte, _Data, _type_name, _utf8, _Value

# strconv.FormatFloat and Go's fmt: how Go prints values, which Prometheus users see constantly
# ({{ $value }} is fmt's %v of a float64: the shortest digits that round-trip, in exponent form when
# the decimal exponent is below -4 or at least 6, so 123456 but 1.234567e+06 and 1e+06).


def _digits(d: Decimal) -> tuple[str, int]:
    """The significant digits of |d| without trailing zeros, and the decimal point position."""
    _, digit_tuple, exp = d.as_tuple()
    assert isinstance(exp, int)
    s = "".join(map(str, digit_tuple)).lstrip("0")
    if not s:
        return "", 0
    stripped = s.rstrip("0")
    return stripped, len(s) + exp


_CONTEXT = Context(prec=2500)  # enough for every digit of a float64 with 1100 decimals


def _decimal_digits(a: float, fmt: str, prec: int) -> tuple[str, int, bool]:
    """Digits of a >= 0 as strconv chooses them: shortest (prec < 0) or correctly rounded."""
    if prec < 0:
        ds, dp = _digits(Decimal(repr(a)))  # repr is the shortest round-tripping form, like Go's
        return ds, dp, True
    if a == 0:
        return "", 0, False
    exact = Decimal(a)
    if fmt == "f":
        q = exact.quantize(Decimal(1).scaleb(-min(prec, 1100)), ROUND_HALF_EVEN, _CONTEXT)
    else:
        nsig = min(prec + 1 if fmt in "eE" else max(prec, 1), 800)
        q = exact.quantize(Decimal(1).scaleb(exact.adjusted() - nsig + 1), ROUND_HALF_EVEN, _CONTEXT)
    ds, dp = _digits(q)
    return ds, dp, False


def _fmt_e(d: str, dp: int, prec: int, ch: str) -> str:
    out = d[:1] or "0"
    if prec > 0:
        out += "." + d[1:prec + 1].ljust(prec, "0")
    exp = dp - 1 if d else 0
    sign = "-" if exp < 0 else "+"
    return f"{out}{ch}{sign}{abs(exp):02d}"


def _fmt_f(d: str, dp: int, prec: int) -> str:
    out = (d[:dp].ljust(dp, "0")) if dp > 0 else "0"
    if prec > 0:
        out += "." + "".join(d[j] if 0 <= j < len(d) else "0" for j in range(dp, dp + prec))
    return out


def _fmt_b(a: float) -> str:
    bits = struct.unpack(">Q", struct.pack(">d", a))[0]
    exp, mant = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023 + 52
    return f"{mant}p{'+' if exp >= 0 else ''}{exp}"


def _fmt_x(a: float, prec: int, fmt: str) -> str:
    bits = struct.unpack(">Q", struct.pack(">d", a))[0]
    exp, mant = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023
    if mant == 0:
        exp = 0
    mask = (1 << 64) - 1
    mant <<= 60 - 52
    while mant and not mant & (1 << 60):
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    digits = "0123456789abcdef" if fmt == "x" else "0123456789ABCDEF"
    out = "0" + fmt + "01"[(mant >> 60) & 1]
    mant = (mant << 4) & mask
    if prec < 0 and mant:
        out += "."
        while mant:
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    elif prec > 0:
        out += "."
        for _ in range(prec):
            out += digits[(mant >> 60) & 15]
            mant = (mant << 4) & mask
    return out + ("p" if fmt == "x" else "P") + ("-" if exp < 0 else "+") + f"{abs(exp):02d}"


def _format_float(v: float, fmt: str, prec: int) -> str:
    """strconv.FormatFloat(v, fmt, prec, 64)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    neg = math.copysign(1.0, v) < 0
    a = abs(v)
    if fmt == "b":
        body = _fmt_b(a)
    elif fmt in "xX":
        body = _fmt_x(a, prec, fmt)
    else:
        d, dp, shortest = _decimal_digits(a, fmt, prec)
        nd = len(d)
        if shortest:
            prec = {"e": max(nd - 1, 0), "E": max(nd - 1, 0), "f": max(nd - dp, 0)}.get(fmt, nd)
        if fmt in "eE":
            body = _fmt_e(d, dp, prec, fmt)
        elif fmt == "f":
            body = _fmt_f(d, dp, prec)
        else:  # g, G: %e for exponents < -4 or >= the precision (6 for shortest), else %f
            eprec = 6 if shortest else (nd if prec > nd >= dp else prec)
            exp = dp - 1
            if exp < -4 or exp >= eprec:
                body = _fmt_e(d, dp, min(prec, nd) - 1, "e" if fmt == "g" else "E")
            else:
                body = _fmt_f(d, dp, max((nd if prec > dp else prec) - dp, 0))
    return ("-" if neg else "") + body


@dataclass
class _Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    plus_v: bool = False
    sharp_v: bool = False
    wid: int = 0
    wid_present: bool = False
    prec: int = 0
    prec_present: bool = False


class _Printer:
    """Go's fmt.pp and fmt.fmt: one Sprint/Sprintf call."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.f = _Flags()
        self.arg: _Value = None

    def text(self) -> str:
        return "".join(self.buf)

    def write_padding(self, n: int) -> None:
        if n > 0:
            self.buf.append(("0" if self.f.zero else " ") * n)

    def pad(self, s: str) -> None:
        f = self.f
        if not f.wid_present or f.wid == 0:
            self.buf.append(s)
        elif f.minus:
            self.buf.append(s)
            self.write_padding(f.wid - len(s))
        else:
            self.write_padding(f.wid - len(s))
            self.buf.append(s)

    def pad_unzeroed(self, s: str) -> None:
        zero, self.f.zero = self.f.zero, False
        self.pad(s)
        self.f.zero = zero

    def bad_verb(self, verb: str) -> None:
        self.buf.append(f"%!{verb}(")
        if self.arg is not None:
            self.buf.append(_type_name(self.arg) + "=")
            self.print_arg(self.arg, "v")
        else:
            self.buf.append("<nil>")
        self.buf.append(")")

    def print_arg(self, arg: _Value, verb: str) -> None:
        self.arg = arg
        if arg is None:
            if verb in "Tv":
                self.pad("<nil>")
            else:
                self.bad_verb(verb)
        elif verb == "T":
            self.fmt_s(_type_name(arg))
        elif verb == "p":
            self.bad_verb(verb)
        else:
            self.print_value(arg, verb, 0)

    def print_value(self, v: _Value, verb: str, depth: int) -> None:
        if depth > 0:
            self.arg = v
        f = self.f
        if isinstance(v, bool):
            if verb in "tv":
                self.pad("true" if v else "false")
            else:
                self.bad_verb(verb)
        elif isinstance(v, int):
            self.fmt_integer(v, not isinstance(v, _Byte), verb)
        elif isinstance(v, float):
            if verb == "v":
                self.fmt_float(v, "g", -1)
            elif verb in "bgGxX":
                self.fmt_float(v, verb, -1)
            elif verb in "feEF":
                self.fmt_float(v, verb, 6)
            else:
                self.bad_verb(verb)
        elif isinstance(v, str):
            self.fmt_string(v, verb)
        elif isinstance(v, dict):
            self.buf.append("map[string]string{" if f.sharp_v else "map[")
            for i, k in enumerate(sorted(v)):
                if i:
                    self.buf.append(", " if f.sharp_v else " ")
                self.print_value(k, verb, depth + 1)
                self.buf.append(":")
                self.print_value(v[k], verb, depth + 1)
            self.buf.append("}" if f.sharp_v else "]")
        elif isinstance(v, _Data):
            self.buf.append(_DATA_TYPE + "{" if f.sharp_v else "{")
            for i, (name, fv) in enumerate(v.fields()):
                if i:
                    self.buf.append(", " if f.sharp_v else " ")
                if f.plus_v or f.sharp_v:
                    self.buf.append(name + ":")
                self.print_value(fv, verb, depth + 1)
            self.buf.append("}")
        else:
            self.buf.append("<nil>")

    def fmt_integer(self, v: int, signed: bool, verb: str) -> None:
        if verb == "v" and self.f.sharp_v and not signed:
            sharp, self.f.sharp = self.f.sharp, True
            self.fmt_int(v, 16, verb, "0123456789abcdefx")
            self.f.sharp = sharp
        elif verb in "vd":
            self.fmt_int(v, 10, verb, "0123456789")
        elif verb in "boOxX":
            base = {"b": 2, "o": 8, "O": 8, "x": 16, "X": 16}[verb]
            self.fmt_int(v, base, verb, "0123456789ABCDEFX" if verb == "X" else "0123456789abcdefx")
        elif verb == "c":
            r = v if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else 0xFFFD
            self.pad(chr(r))
        elif verb == "q":
            self.pad(_quote_rune(v, self.f.plus))
        elif verb == "U":
            self.fmt_unicode(v)
        else:
            self.bad_verb(verb)

    def fmt_int(self, v: int, base: int, verb: str, digits: str) -> None:
        f = self.f
        negative, u = v < 0, abs(v)
        prec = 0
        if f.prec_present:
            prec = f.prec
            if prec == 0 and u == 0:  # %.0d of 0 prints nothing but padding
                zero, f.zero = f.zero, False
                self.write_padding(f.wid)
                f.zero = zero
                return
        elif f.zero and f.wid_present:  # %05d pads with zeros after the sign
            prec = f.wid - (negative or f.plus or f.space)
        out = ""
        while True:
            out = digits[u % base] + out
            u //= base
            if not u:
                break
        out = out.rjust(prec, "0")
        if f.sharp:
            if base == 2:
                out = "0b" + out
            elif base == 8 and out[0] != "0":
                out = "0" + out
            elif base == 16:
                out = "0" + digits[16] + out
        if verb == "O":
            out = "0o" + out
        out = ("-" if negative else "+" if f.plus else " " if f.space else "") + out
        self.pad_unzeroed(out)

    def fmt_unicode(self, v: int) -> None:
        u = v & ((1 << 64) - 1)
        prec = self.f.prec if self.f.prec_present and self.f.prec > 4 else 4
        out = "U+" + f"{u:X}".rjust(prec, "0")
        if self.f.sharp and u <= 0x10FFFF and chr(u).isprintable():
            out += f" '{chr(u)}'"
        self.pad_unzeroed(out)

    def fmt_float(self, v: float, verb: str, prec: int) -> None:
        f = self.f
        if f.prec_present:
            prec = f.prec
        s = _format_float(v, "f" if verb == "F" else verb, prec)
        num = s if s[0] in "+-" else "+" + s
        if f.space and num[0] == "+" and not f.plus:
            num = " " + num[1:]
        if num[1] in "IN":  # infinities and NaN are padded with spaces, never zeros
            if num[1] == "N" and not f.space and not f.plus:
                num = num[1:]
            self.pad_unzeroed(num)
            return
        if f.sharp and verb != "b":  # %#g keeps trailing zeros; %#.0f keeps the point
            num = self.sharp_float(num, verb, prec)
        if f.plus or num[0] != "+":
            if f.zero and f.wid_present and f.wid > len(num):
                self.buf.append(num[0])
                self.write_padding(f.wid - len(num))
                self.buf.append(num[1:])
            else:
                self.pad(num)
        else:
            self.pad(num[1:])

    @staticmethod
    def sharp_float(num: str, verb: str, prec: int) -> str:
        digits = (6 if prec == -1 else prec) if verb in "vgGx" else 0
        tail, has_point, saw_nonzero = "", False, False
        i = 1
        while i < len(num):
            c = num[i]
            if c == ".":
                has_point = True
            elif c in "pP" or (c in "eE" and verb not in "xX"):
                tail, num = num[i:], num[:i]
                break
            else:
                saw_nonzero = saw_nonzero or c != "0"
                digits -= saw_nonzero
            i += 1
        if not has_point:
            if len(num) == 2 and num[1] == "0":
                digits -= 1
            num += "."
        return num + "0" * max(digits, 0) + tail

    def fmt_string(self, s: str, verb: str) -> None:
        f = self.f
        if (verb == "v" and not f.sharp_v) or verb == "s":
            self.fmt_s(s)
        elif verb in "xX":
            self.fmt_sx(s, "0123456789abcdefx" if verb == "x" else "0123456789ABCDEFX")
        elif verb in "vq":
            s = self.truncate(s)
            if f.sharp and _can_backquote(s):
                self.pad("`" + s + "`")
            else:
                self.pad(_go_quote(s, ascii_only=f.plus))
        else:
            self.bad_verb(verb)

    def truncate(self, s: str) -> str:
        return s[:self.f.prec] if self.f.prec_present else s

    def fmt_s(self, s: str) -> None:
        self.pad(self.truncate(s))

    def fmt_sx(self, s: str, digits: str) -> None:
        f = self.f
        b = _utf8(s)
        length = min(len(b), f.prec) if f.prec_present else len(b)
        width = 2 * length
        if width == 0:
            if f.wid_present:
                self.write_padding(f.wid)
            return
        if f.space:
            width = width * (2 if f.sharp else 1) + length - 1
        elif f.sharp:
            width += 2
        if f.wid_present and f.wid > width and not f.minus:
            self.write_padding(f.wid - width)
        out = "0" + digits[16] if f.sharp else ""
        for i in range(length):
            if f.space and i:
                out += " " + ("0" + digits[16] if f.sharp else "")
            out += digits[b[i] >> 4] + digits[b[i] & 15]
        self.buf.append(out)
        if f.wid_present and f.wid > width and f.minus:
            self.write_padding(f.wid - width)


def _sprint(args: Sequence[_Value]) -> str:
    """fmt.Sprint: spaces between operands when neither is a string."""
    p, prev_string = _Printer(), False
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i and not is_string and not prev_string:
            p.buf.append(" ")
        p.print_arg(arg, "v")
        prev_string = is_string
    return p.text()


def _sprintln(args: Sequence[_Value]) -> str:
    p = _Printer()
    for i, arg in enumerate(args):
        if i:
            p.buf.append(" ")
        p.print_arg(arg, "v")
    return p.text() + "\n"


def _parsenum(s: str, i: int) -> tuple[int, bool, int]:
    num, isnum = 0, False
    while i < len(s) and "0" <= s[i] <= "9":
        if num > 1_000_000:
            return 0, False, len(s)
        num, isnum, i = num * 10 + ord(s[i]) - 48, True, i + 1
    return num, isnum, i


def _sprintf(fmt: str, args: Sequence[_Value]) -> str:
    """fmt.Sprintf, including its in-band complaints (%!d(string=x), %!d(MISSING), %!(EXTRA ...))."""
    p, end, argnum, reordered = _Printer(), len(fmt), 0, False

    def arg_number(argnum: int, i: int) -> tuple[int, int, bool, bool]:
        """An explicit [n] argument index at i: (argnum, i, found, good)."""
        nonlocal reordered
        if i >= end or fmt[i] != "[":
            return argnum, i, False, True
        reordered = True
        close = fmt.find("]", i + 1)
        if end - i < 3 or close < 0:
            return argnum, i + 1, False, False
        n, ok, newi = _parsenum(fmt, i + 1)
        if not ok or newi != close:
            return argnum, close + 1, False, False
        if 0 <= n - 1 < len(args):
            return n - 1, close + 1, True, True
        return argnum, close + 1, True, False

    def int_from_arg(argnum: int) -> tuple[int, bool, int]:
        if argnum >= len(args):
            return 0, False, argnum
        a = args[argnum]
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) <= 1_000_000:
            return a, True, argnum + 1
        return 0, False, argnum + 1

    i = 0
    while i < end:
        good = True
        j = fmt.find("%", i)
        if j < 0:
            p.buf.append(fmt[i:])
            break
        p.buf.append(fmt[i:j])
        i = j + 1
        f = p.f = _Flags()
        while i < end and fmt[i] in "#0+- ":
            c = fmt[i]
            if c == "#":
                f.sharp = True
            elif c == "0":
                f.zero = not f.minus
            elif c == "+":
                f.plus = True
            elif c == "-":
                f.minus, f.zero = True, False
            else:
                f.space = True
            i += 1
        argnum, i, after_index, ok = arg_number(argnum, i)
        good = good and ok
        if i < end and fmt[i] == "*":
            f.wid, f.wid_present, argnum = int_from_arg(argnum)
            i += 1
            if not f.wid_present:
                p.buf.append("%!(BADWIDTH)")
            if f.wid < 0:
                f.wid, f.minus, f.zero = -f.wid, True, False
            after_index = False
        else:
            f.wid, f.wid_present, i = _parsenum(fmt, i)
            if after_index and f.wid_present:
                good = False
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:
                good = False
            argnum, i, after_index, ok = arg_number(argnum, i)
            good = good and ok
            if i < end and fmt[i] == "*":
                f.prec, f.prec_present, argnum = int_from_arg(argnum)
                i += 1
                if f.prec < 0:
                    f.prec, f.prec_present = 0, False
                if not f.prec_present:
                    p.buf.append("%!(BADPREC)")
                after_index = False
            else:
                f.prec, f.prec_present, i = _parsenum(fmt, i)
                f.prec_present = True
        if not after_index:
            argnum, i, after_index, ok = arg_number(argnum, i)
            good = good and ok
        if i >= end:
            p.buf.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            p.buf.append("%")
        elif not good:
            p.buf.append(f"%!{verb}(BADINDEX)")
        elif argnum >= len(args):
            p.buf.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                f.sharp_v, f.sharp, f.plus_v, f.plus = f.sharp, False, f.plus, False
            p.print_arg(args[argnum], verb)
            argnum += 1
    if not reordered and argnum < len(args):
        p.f = _Flags()
        p.buf.append("%!(EXTRA ")
        for k, arg in enumerate(args[argnum:]):
            if k:
                p.buf.append(", ")
            if arg is None:
                p.buf.append("<nil>")
            else:
                p.buf.append(_type_name(arg) + "=")
                p.print_arg(arg, "v")
        p.buf.append(")")
    return p.text()


def _fmt_g4(v: float) -> str:
    if type(v) is float and math.isfinite(v):
        # Go's %.4g and C's agree on every finite float64 (a test compares them), and the humanize
        # functions run for every active alert at every evaluation: skip the fmt port here.
        return format(v, ".4g")
    return _sprintf("%.4g", [v])


