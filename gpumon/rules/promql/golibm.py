"""Go's math package as promtool 2.42 runs it on linux/amd64 (Debian's build, Go 1.19.8), ported
operation by operation so that gpumon's values are Go's to the last bit, not C's.

What amd64 runs: Exp and Log are assembly (src/math/exp_amd64.s, log_amd64.s); everything else here
is the portable Go code (sin.go, tan.go, trig_reduce.go, asin.go, atan.go, atan2.go, sinh.go, tanh.go,
asinh.go, acosh.go, atanh.go, log1p.go, log10.go, pow.go), which Go's compiler does not fuse into
FMA on amd64: each `*`, `/`, `+`, `-` there is one IEEE operation, as each is here. Exp takes a
second path with fused multiply-adds on CPUs with AVX2 and FMA (Go's `useFMA`), emulated exactly
here; `USE_FMA` follows the CPU as Go's does. Where the Go source and the machine code of
/usr/bin/promtool disagreed (sinh and cosh changed in Go 1.19), the machine code was followed; the
answers are promtool's, bit for bit (tests/rules/record_golibm.py, tests/rules/test_golibm.py).
"""

from __future__ import annotations

import math
import struct
from fractions import Fraction

_GO_PI = Fraction("3.14159265358979323846264338327950288419716939937510582097494459")
_GO_LN2 = Fraction("0.693147180559945309417232121458176568")
_GO_LN10 = Fraction("2.30258509299404568401799145468436420760110148862877297603332790")

# Go's constant expressions, exact until converted to float64 (Pi/2, 4/Pi, 1/Ln10, ...)
PI = float(_GO_PI)
PI_2 = float(_GO_PI / 2)
PI_4 = float(_GO_PI / 4)
PI3_4 = float(3 * _GO_PI / 4)
FOUR_OVER_PI = float(4 / _GO_PI)
LOG2E = float(1 / _GO_LN2)
LOG10E = float(1 / _GO_LN10)

_MASK64 = (1 << 64) - 1
_INF = math.inf
_NAN = math.nan


def _bits(x: float) -> int:
    return int.from_bytes(struct.pack("<d", x), "little")


def _from_bits(b: int) -> float:
    return float(struct.unpack("<d", b.to_bytes(8, "little"))[0])


_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's splitter


def _fma_exact(a: float, b: float, c: float) -> float:
    """a*b + c rounded once (finite arguments), with integers: slow, always right."""
    an, ad = a.as_integer_ratio()
    bn, bd = b.as_integer_ratio()
    cn, cd = c.as_integer_ratio()
    pd = ad * bd  # denominators are powers of two
    if pd >= cd:
        num, den = an * bn + cn * (pd // cd), pd
    else:
        num, den = an * bn * (cd // pd) + cn, cd
    if num == 0:  # an exact zero: +0 unless both addends are -0
        return c if a * b == 0 and math.copysign(1.0, a * b) == math.copysign(1.0, c) else 0.0
    return num / den  # int / int is correctly rounded


def _fma(a: float, b: float, c: float) -> float:
    """a*b + c rounded once: x86's VFMADD231SD/213SD. Boldo and Melquiond's emulation (IEEE Trans.
    Computers 57(4), 2008): Dekker's exact product p + e = a*b, Knuth's exact sum s + t = p + c, then
    s + (t + e) with the inner sum rounded to odd. Where the product could underflow or a split
    overflow, the integer way."""
    p = a * b
    if not 2.0**-900 < abs(p) < 2.0**900 or abs(a) > 2.0**900 or abs(b) > 2.0**900:
        return _fma_exact(a, b, c)
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    s = p + c
    v = s - p
    t = (p - (s - v)) + (c - v)
    w = t + e
    v = w - t
    err = (t - (w - v)) + (e - v)
    if err != 0.0 and not _bits(w) & 1:  # inexact and even: round to odd instead
        w = math.nextafter(w, math.copysign(_INF, err))
    return s + w


def _cpu_has_fma() -> bool:
    """Go's useFMA (exp_amd64.go): cpu.X86.HasAVX2 && cpu.X86.HasFMA."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx2" in flags and "fma" in flags
    except OSError:
        pass
    return True  # most amd64 CPUs since 2013


USE_FMA = _cpu_has_fma()

# exp_amd64.s
_EXP_OVERFLOW = 7.09782712893384e+02
_LN2U = 0.69314718055966295651160180568695068359375
_LN2L = 0.28235290563031577122588448175013436025525412068e-12
_EXP_T = (  # the Taylor series' terms, 1/8! first
    2.4801587301587301587e-5, 1.9841269841269841270e-4, 1.3888888888888888889e-3, 8.3333333333333333333e-3,
    4.1666666666666666667e-2, 1.6666666666666666667e-1, 0.5, 1.0)


def go_exp(x: float) -> float:
    """math.Exp on amd64 (exp_amd64.s): k = round(x*log2(e)), r = x - k*ln2 in two parts, a Taylor
    series of r/16 squared four times, scaled by 2**k; with FMA where the CPU has it."""
    if x != x or x == _INF:
        return x
    if x == -_INF:
        return 0.0
    if x > _EXP_OVERFLOW:
        return _INF
    t = LOG2E * x
    k = round(t) if abs(t) < 2.0**32 else -(2**31)  # CVTSD2SL: to nearest, ties to even
    if not -(2**31) <= k < 2**31:  # out of range: the int32 minimum
        k = -(2**31)
    e = k + 0x3FF
    if e < -52:
        return 0.0
    if e >= 0x7FF:
        return _INF
    fk = float(k)
    if USE_FMA:
        r = _fma(-_LN2U, fk, x)
        r = _fma(-_LN2L, fk, r) * 0.0625
        p = _EXP_T[0]
        for c in _EXP_T[1:]:
            p = _fma(p, r, c)
        r = r * p
        for _ in range(3):
            r = r * (r + 2.0)
        r = _fma(r, r + 2.0, 1.0)
    else:
        r = x - fk * _LN2U
        r = (r - fk * _LN2L) * 0.0625
        p = _EXP_T[0]
        for c in _EXP_T[1:]:
            p = p * r + c
        r = r * p
        for _ in range(4):
            r = r * (r + 2.0)
        r = r + 1.0
    if e <= 0:  # a subnormal result: two steps, the second rounds
        return (r * _from_bits((e + 0x3FE) << 52)) * _from_bits(1 << 52)
    return r * _from_bits(e << 52)


# log_amd64.s (FreeBSD's e_log.c)
_HSQRT2 = 7.07106781186547524401e-01
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_LP = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01,
       1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01)  # log1p.go's Lp1..Lp7 too


def go_log(x: float) -> float:
    """math.Log on amd64 (log_amd64.s). The exponent and fraction come straight from the bits, so a
    subnormal x is read as if normal: Log(5e-324) is -709.09, not -744.44, as in promtool."""
    b = _bits(x)
    if b & 0x7FFFFFFFFFFFFFFF == 0:
        return -_INF
    if b >> 63:
        return _NAN
    if b >= 0x7FF0000000000000:
        return x
    f1 = _from_bits((b & 0xFFFFFFFFFFFFF) | 0x3FE0000000000000)
    k = float((b >> 52) - 0x3FE)
    if f1 <= _HSQRT2:  # CMPNLTSD: not HSqrt2 < f1
        k -= 1.0
        f = f1 * 2.0 - 1.0
    else:
        f = f1 * 1.0 - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    s4 = s2 * s2
    l1, l2, l3, l4, l5, l6, l7 = _LP
    t1 = s2 * (((l7 * s4 + l5) * s4 + l3) * s4 + l1)
    t2 = s4 * ((l6 * s4 + l4) * s4 + l2)
    hfsq = 0.5 * f * f
    return k * _LN2HI - ((hfsq - (s * ((t1 + t2) + hfsq) + _LN2LO * k)) - f)


def go_log2(x: float) -> float:
    """log10.go's log2: the exponent from Frexp, Log of the fraction."""
    frac, exp = math.frexp(x)
    if frac == 0.5:  # an exact power of two
        return float(exp - 1)
    return go_log(frac) * LOG2E + float(exp)


def go_log10(x: float) -> float:
    return go_log(x) * LOG10E


def go_log1p(x: float) -> float:
    """log1p.go (FreeBSD's s_log1p.c)."""
    if x < -1 or x != x:
        return _NAN
    if x == -1:
        return -_INF
    if x == _INF:
        return _INF
    absx = abs(x)
    f = 0.0
    iu = 0
    k = 1
    if absx < 4.142135623730950488017e-01:  # Sqrt(2)-1
        if absx < 2.0**-29:
            if absx < 2.0**-54:
                return x
            return x - x * x * 0.5
        if x > -2.928932188134524755992e-01:  # Sqrt(2)/2-1
            k, f, iu = 0, x, 1
    c = 0.0
    if k != 0:
        if absx < 2.0**53:
            u = 1.0 + x
            iu = _bits(u)
            k = (iu >> 52) - 1023
            c = 1.0 - (u - x) if k > 0 else x - (u - 1.0)  # the correction term
            c /= u
        else:
            u = x
            iu = _bits(u)
            k = (iu >> 52) - 1023
            c = 0.0
        iu &= 0x000FFFFFFFFFFFFF
        if iu < 0x0006A09E667F3BCD:  # the mantissa of Sqrt(2)
            u = _from_bits(iu | 0x3FF0000000000000)
        else:
            k += 1
            u = _from_bits(iu | 0x3FE0000000000000)
            iu = (0x0010000000000000 - iu) >> 2
        f = u - 1.0
    hfsq = 0.5 * f * f
    fk = float(k)
    if iu == 0:  # |f| < 2**-20
        if f == 0:
            if k == 0:
                return 0.0
            c += fk * _LN2LO
            return fk * _LN2HI + c
        r = hfsq * (1.0 - 0.66666666666666666 * f)
        if k == 0:
            return f - r
        return fk * _LN2HI - ((r - (fk * _LN2LO + c)) - f)
    s = f / (2.0 + f)
    z = s * s
    lp1, lp2, lp3, lp4, lp5, lp6, lp7 = _LP
    r = z * (lp1 + z * (lp2 + z * (lp3 + z * (lp4 + z * (lp5 + z * (lp6 + z * lp7))))))
    if k == 0:
        return f - (hfsq - s * (hfsq + r))
    return fk * _LN2HI - ((hfsq - (s * (hfsq + r) + (fk * _LN2LO + c))) - f)


# --- sin.go, tan.go, trig_reduce.go (Cephes, Payne-Hanek above 2**29) ---------------------------------

_PI4A = 7.85398125648498535156e-1
_PI4B = 3.77489470793079817668e-8
_PI4C = 2.69515142907905952645e-15
_SIN = (1.58962301576546568060e-10, -2.50507477628578072866e-8, 2.75573136213857245213e-6,
        -1.98412698295895385996e-4, 8.33333333332211858878e-3, -1.66666666666666307295e-1)
_COS = (-1.13585365213876817300e-11, 2.08757008419747316778e-9, -2.75573141792967388112e-7,
        2.48015872888517045348e-5, -1.38888888888730564116e-3, 4.16666666666665929218e-2)
_TAN_P = (-1.30936939181383777646e4, 1.15351664838587416140e6, -1.79565251976484877988e7)
_TAN_Q = (1.36812963470692954678e4, -1.32089234440210967447e6, 2.50083801823357915839e7, -5.38695755929454629881e7)
_REDUCE_THRESHOLD = float(1 << 29)
# 4/pi in binary: 4/pi = sum of _M_PI4[i] * 2**(-64*i)
_M_PI4 = (
    0x0000000000000001, 0x45F306DC9C882A53, 0xF84EAFA3EA69BB81, 0xB6C52B3278872083, 0xFCA2C757BD778AC3,
    0x6E48DC74849BA5C0, 0x0C925DD413A32439, 0xFC3BD63962534E7D, 0xD1046BEA5D768909, 0xD338E04D68BEFC82,
    0x7323AC7306A673E9, 0x3908BF177BF25076, 0x3FF12FFFBC0B301F, 0xDE5E2316B414DA3E, 0xDA6CFD9E4F96136E,
    0x9E8C7ECD3CBFD45A, 0xEA4F758FD7CBE2F6, 0x7A0E73EF14A525D4, 0xD7F6BF623F1ABA10, 0xAC06608DF8F6D757,
)


def _trig_reduce(x: float) -> tuple[int, float]:
    """Payne-Hanek reduction of x >= 2**29 by pi/4: the octant mod 8 and the remainder (trig_reduce.go)."""
    if x < PI_4:
        return 0, x
    ix = _bits(x)
    exp = ((ix >> 52) & 0x7FF) - 1023 - 52
    ix = (ix & 0xFFFFFFFFFFFFF) | (1 << 52)
    digit, shift = divmod(exp + 61, 64)
    m = _M_PI4
    z0 = ((m[digit] << shift) | (m[digit + 1] >> (64 - shift))) & _MASK64
    z1 = ((m[digit + 1] << shift) | (m[digit + 2] >> (64 - shift))) & _MASK64
    z2 = ((m[digit + 2] << shift) | (m[digit + 3] >> (64 - shift))) & _MASK64
    z2hi = (z2 * ix) >> 64
    z1prod = z1 * ix
    z1hi, z1lo = z1prod >> 64, z1prod & _MASK64
    z0lo = (z0 * ix) & _MASK64
    lo = z1lo + z2hi
    hi = (z0lo + z1hi + (lo >> 64)) & _MASK64
    lo &= _MASK64
    j = hi >> 61
    hi = ((hi << 3) | (lo >> 61)) & _MASK64
    lz = 64 - hi.bit_length()
    e = 1023 - (lz + 1)
    n = lz + 1  # Go's shifts by 64 or more give 0
    hi = ((hi << n) & _MASK64 if n < 64 else 0) | (lo >> (64 - n) if n <= 64 else 0)
    hi >>= 12
    z = _from_bits(hi | (e << 52))
    if j & 1:
        j = (j + 1) & 7
        z -= 1.0
    return j, z * PI_4


def _octant(x: float) -> tuple[int, float]:
    """x >= 0: the octant j (0..7, odd ones moved up) and the remainder z, as sin.go reduces."""
    if x >= _REDUCE_THRESHOLD:
        return _trig_reduce(x)
    j = int(x * FOUR_OVER_PI)
    y = float(j)
    if j & 1:
        j += 1
        y += 1.0
    return j & 7, ((x - y * _PI4A) - y * _PI4B) - y * _PI4C


def _sin_poly(z: float, zz: float) -> float:
    s0, s1, s2, s3, s4, s5 = _SIN
    return z + z * zz * ((((((s0 * zz) + s1) * zz + s2) * zz + s3) * zz + s4) * zz + s5)


def _cos_poly(zz: float) -> float:
    c0, c1, c2, c3, c4, c5 = _COS
    return 1.0 - 0.5 * zz + zz * zz * ((((((c0 * zz) + c1) * zz + c2) * zz + c3) * zz + c4) * zz + c5)


def go_sin(x: float) -> float:
    if x == 0 or x != x:
        return x
    if x in (_INF, -_INF):
        return _NAN
    sign = x < 0
    j, z = _octant(-x if sign else x)
    if j > 3:
        sign = not sign
        j -= 4
    zz = z * z
    y = _cos_poly(zz) if j in (1, 2) else _sin_poly(z, zz)
    return -y if sign else y


def go_cos(x: float) -> float:
    if x != x or x in (_INF, -_INF):
        return _NAN
    sign = False
    j, z = _octant(abs(x))
    if j > 3:
        j -= 4
        sign = not sign
    if j > 1:
        sign = not sign
    zz = z * z
    y = _sin_poly(z, zz) if j in (1, 2) else _cos_poly(zz)
    return -y if sign else y


def go_tan(x: float) -> float:
    if x == 0 or x != x:
        return x
    if x in (_INF, -_INF):
        return _NAN
    sign = x < 0
    j, z = _octant(-x if sign else x)
    zz = z * z
    if zz > 1e-14:
        p0, p1, p2 = _TAN_P
        q1, q2, q3, q4 = _TAN_Q
        y = z + z * (zz * (((p0 * zz) + p1) * zz + p2) / ((((zz + q1) * zz + q2) * zz + q3) * zz + q4))
    else:
        y = z
    if j & 2:
        y = -1 / y
    return -y if sign else y


# --- asin.go, atan.go, atan2.go (Cephes) ------------------------------------------------------------------

_MOREBITS = 6.123233995736765886130e-17  # pi/2 = PIO2 + Morebits
_HALF_MOREBITS = float(Fraction(1, 2) * Fraction("6.123233995736765886130e-17"))
_TAN3PIO8 = 2.41421356237309504880
_ATAN_P = (-8.750608600031904122785e-01, -1.615753718733365076637e+01, -7.500855792314704667340e+01,
           -1.228866684490136173410e+02, -6.485021904942025371773e+01)
_ATAN_Q = (2.485846490142306297962e+01, 1.650270098316988542046e+02, 4.328810604912902668951e+02,
           4.853903996359136964868e+02, 1.945506571482613964425e+02)


def _xatan(x: float) -> float:
    p0, p1, p2, p3, p4 = _ATAN_P
    q0, q1, q2, q3, q4 = _ATAN_Q
    z = x * x
    z = z * ((((p0 * z + p1) * z + p2) * z + p3) * z + p4) / (((((z + q0) * z + q1) * z + q2) * z + q3) * z + q4)
    return x * z + x


def _satan(x: float) -> float:
    if x <= 0.66:
        return _xatan(x)
    if x > _TAN3PIO8:
        return PI_2 - _xatan(1 / x) + _MOREBITS
    return PI_4 + _xatan((x - 1) / (x + 1)) + _HALF_MOREBITS


def go_atan(x: float) -> float:
    if x == 0:
        return x
    if x > 0:
        return _satan(x)
    return -_satan(-x)  # NaN lands here: satan(NaN) is NaN


def go_asin(x: float) -> float:
    if x == 0:
        return x
    sign = x < 0
    if sign:
        x = -x
    if x > 1:
        return _NAN
    temp = math.sqrt(1 - x * x)  # NaN for a NaN x, no exception
    temp = PI_2 - _satan(temp / x) if x > 0.7 else _satan(x / temp)
    return -temp if sign else temp


def go_acos(x: float) -> float:
    return PI_2 - go_asin(x)


def go_atan2(y: float, x: float) -> float:
    if y != y or x != x:
        return _NAN
    if y == 0:
        if x >= 0 and math.copysign(1.0, x) > 0:
            return math.copysign(0.0, y)
        return math.copysign(PI, y)
    if x == 0:
        return math.copysign(PI_2, y)
    if x in (_INF, -_INF):
        if x == _INF:
            return math.copysign(PI_4 if y in (_INF, -_INF) else 0.0, y)
        return math.copysign(PI3_4 if y in (_INF, -_INF) else PI, y)
    if y in (_INF, -_INF):
        return math.copysign(PI_2, y)
    q = go_atan(y / x)
    if x < 0:
        return q + PI if q <= 0 else q - PI
    return q


# --- sinh.go (Go 1.19: Exp once, then 1/Exp), tanh.go, asinh.go, acosh.go, atanh.go --------------------------

_SINH_P = (-0.6307673640497716991184787251e+6, -0.8991272022039509355398013511e+5,
           -0.2894211355989563807284660366e+4, -0.2630563213397497062819489e+2)
_SINH_Q = (-0.6307673640497716991212077277e+6, 0.1521517378790019070696485176e+5, -0.173678953558233699533450911e+3)
_TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
_TANH_LIMIT = float(Fraction(1, 2) * Fraction("8.8029691931113054295988e+01"))  # 0.5*MAXLOG
_LN2 = 6.93147180559945286227e-01


def go_sinh(x: float) -> float:
    sign = x < 0
    if sign:
        x = -x
    if x > 21:
        temp = go_exp(x) * 0.5
    elif x > 0.5:
        ex = go_exp(x)
        temp = (ex - 1 / ex) * 0.5
    else:
        p0, p1, p2, p3 = _SINH_P
        q0, q1, q2 = _SINH_Q
        sq = x * x
        temp = (((p3 * sq + p2) * sq + p1) * sq + p0) * x
        temp = temp / (((sq + q2) * sq + q1) * sq + q0)
    return -temp if sign else temp


def go_cosh(x: float) -> float:
    x = abs(x)
    if x > 21:
        return go_exp(x) * 0.5
    ex = go_exp(x)
    return (ex + 1 / ex) * 0.5


def go_tanh(x: float) -> float:
    z = abs(x)
    if z > _TANH_LIMIT:
        return -1.0 if x < 0 else 1.0
    if z >= 0.625:
        s = go_exp(2 * z)
        z = 1 - 2 / (s + 1)
        return -z if x < 0 else z
    if x == 0 or x != x:
        return x
    p0, p1, p2 = _TANH_P
    q0, q1, q2 = _TANH_Q
    s = x * x
    return x + x * s * ((p0 * s + p1) * s + p2) / (((s + q0) * s + q1) * s + q2)


def go_asinh(x: float) -> float:
    if x != x or x in (_INF, -_INF):
        return x
    sign = x < 0
    if sign:
        x = -x
    if x > 2.0**28:
        temp = go_log(x) + _LN2
    elif x > 2:
        temp = go_log(2 * x + 1 / (math.sqrt(x * x + 1) + x))
    elif x < 2.0**-28:
        temp = x
    else:
        temp = go_log1p(x + x * x / (1 + math.sqrt(1 + x * x)))
    return -temp if sign else temp


def go_acosh(x: float) -> float:
    if x < 1 or x != x:
        return _NAN
    if x == 1:
        return 0.0
    if x >= 2.0**28:
        return go_log(x) + _LN2
    if x > 2:
        return go_log(2 * x - 1 / (x + math.sqrt(x * x - 1)))
    t = x - 1
    return go_log1p(t + math.sqrt(2 * t + t * t))


def go_atanh(x: float) -> float:
    if x < -1 or x > 1 or x != x:
        return _NAN
    if x == 1:
        return _INF
    if x == -1:
        return -_INF
    sign = x < 0
    if sign:
        x = -x
    if x < 2.0**-28:
        temp = x
    elif x < 0.5:
        temp = x + x
        temp = 0.5 * go_log1p(temp + temp * x / (1 - x))
    else:
        temp = 0.5 * go_log1p((x + x) / (1 - x))
    return -temp if sign else temp


# --- pow.go ---------------------------------------------------------------------------------------------


def _is_odd_int(x: float) -> bool:
    if abs(x) >= 2.0**53:  # every float64 this large is even
        return False
    xf, xi = math.modf(x)
    return xf == 0 and int(xi) & 1 == 1


def _ldexp(frac: float, exp: int) -> float:
    """math.Ldexp: rounded once, to 0 or an infinity past the range (Python raises there)."""
    try:
        return math.ldexp(frac, exp)
    except OverflowError:
        return math.copysign(_INF, frac)


def go_pow(x: float, y: float) -> float:
    """math.Pow: the special cases in Go's order, then x**frac(y) by Exp(yf*Log(x)) and x**int(y) by
    repeated squaring with the exponent kept apart (Frexp), one Ldexp at the end."""
    if y == 0 or x == 1:
        return 1.0
    if y == 1:
        return x
    if x != x or y != y:
        return _NAN
    if x == 0:
        if y < 0:
            return math.copysign(_INF, x) if _is_odd_int(y) else _INF
        return x if _is_odd_int(y) else 0.0
    if y in (_INF, -_INF):
        if x == -1:
            return 1.0
        return 0.0 if (abs(x) < 1) == (y == _INF) else _INF
    if x in (_INF, -_INF):
        if x == -_INF:
            return go_pow(1 / x, -y)  # Pow(-0, -y)
        return 0.0 if y < 0 else _INF
    if y == 0.5:
        return math.sqrt(x) if x >= 0 else _NAN
    if y == -0.5:
        return 1 / math.sqrt(x) if x >= 0 else _NAN
    yf, yi = math.modf(abs(y))
    if yf != 0 and x < 0:
        return _NAN
    if yi >= 2.0**63:  # a large even integer: overflow or underflow, but for x == -1
        if x == -1:
            return 1.0
        return 0.0 if (abs(x) < 1) == (y > 0) else _INF
    a1 = 1.0
    ae = 0
    if yf != 0:
        if yf > 0.5:
            yf -= 1
            yi += 1
        a1 = go_exp(yf * go_log(x))
    x1, xe = math.frexp(x)
    i = int(yi)
    while i != 0:
        if xe < -(1 << 12) or xe > (1 << 12):  # the result is out of range: Ldexp gives 0 or Inf
            ae += xe
            break
        if i & 1:
            a1 *= x1
            ae += xe
        x1 *= x1
        xe <<= 1
        if x1 < 0.5:
            x1 += x1
            xe -= 1
        i >>= 1
    if y < 0:
        a1 = 1 / a1
        ae = -ae
    return _ldexp(a1, ae)
