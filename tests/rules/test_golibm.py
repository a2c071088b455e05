"""gpumon's port of Go's math library gives promtool 2.42's float64s bit for bit: a fixed sample of
promtool's answers (tests/rules/corpus/golibm_cases.json, recorded by tests/rules/record_golibm.py
from many more inputs, each compared), on both of Exp's paths (with and without FMA)."""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpumon.rules.promql import golibm
from gpumon.rules.promql.binary import elem
from gpumon.rules.promql.functions_instant import MATH

CASES: dict[str, Any] = json.loads((Path(__file__).parent / "corpus" / "golibm_cases.json").read_text())

FUNCTIONS: dict[str, Callable[..., float]] = {
    "exp": golibm.go_exp, "ln": golibm.go_log, "log2": golibm.go_log2, "log10": golibm.go_log10,
    "sin": golibm.go_sin, "cos": golibm.go_cos, "tan": golibm.go_tan, "asin": golibm.go_asin,
    "acos": golibm.go_acos, "atan": golibm.go_atan, "sinh": golibm.go_sinh, "cosh": golibm.go_cosh,
    "tanh": golibm.go_tanh, "asinh": golibm.go_asinh, "acosh": golibm.go_acosh, "atanh": golibm.go_atanh,
    "atan2": golibm.go_atan2, "^": golibm.go_pow,
}


def _bits(x: float) -> str:
    return "nan" if x != x else f"{struct.unpack('<Q', struct.pack('<d', x))[0]:016x} ({x.hex()})"


def _check(name: str, cases: list[list[str]]) -> None:
    wrong = []
    for case in cases:
        *args, want = (float.fromhex(v) for v in case)
        got = FUNCTIONS[name](*args)
        if _bits(got) != _bits(want):
            wrong.append((args, _bits(want), _bits(got)))
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(CASES["cases"]))
def test_promtools_bits_with_fma(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golibm, "USE_FMA", True)
    _check(name, CASES["cases"][name])


@pytest.mark.parametrize("name", sorted(CASES["cases_without_fma"]))
def test_promtools_bits_without_fma(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(golibm, "USE_FMA", False)
    _check(name, CASES["cases_without_fma"][name])


def test_the_sample_covers_every_ported_function_and_came_from_thousands_of_inputs() -> None:
    assert set(CASES["cases"]) == set(FUNCTIONS)
    assert set(CASES["cases_without_fma"]) == {"exp", "sinh", "cosh", "tanh", "^"}
    assert all(n >= 5000 for n in CASES["compared"].values())
    assert sum(len(c) for c in CASES["cases"].values()) >= 500


def test_the_evaluator_uses_the_port() -> None:
    for name, fn in FUNCTIONS.items():
        if name in MATH:
            assert MATH[name] is fn, name
    assert elem("atan2", 1.0, 2.0) == (golibm.go_atan2(1.0, 2.0), True)
    assert elem("^", 3.0, 0.7) == (golibm.go_pow(3.0, 0.7), True)


def test_fma_is_exact() -> None:
    # 1 + 2**-52 squared is 1 + 2**-51 + 2**-104: rounded separately the last term is lost
    a = 1 + 2.0**-52
    for fma in (golibm._fma, golibm._fma_exact):
        assert fma(a, a, -(1 + 2.0**-51)) == 2.0**-104
        assert math.copysign(1.0, fma(-0.0, 1.0, -0.0)) == -1.0
        assert math.copysign(1.0, fma(1.0, 1.0, -1.0)) == 1.0
        assert fma(3.0, 1 / 3, -1.0) == -(2.0**-54)
    assert a * a - (1 + 2.0**-51) == 0


def test_the_fast_fma_agrees_with_the_integer_one() -> None:
    """Boldo and Melquiond's emulation against exact integer arithmetic, near ties and cancellations
    included (3 million such cases were compared while porting; these are a reproducible few)."""
    rng = random.Random(2024)

    def mantissa() -> float:
        return rng.choice((-1.0, 1.0)) * (rng.getrandbits(53) | 1 << 52) * 2.0 ** rng.randint(-80, 30)

    for _ in range(20000):
        a, b = mantissa(), mantissa()
        p = a * b
        c = rng.choice((mantissa(), -p * (1 + rng.randint(-8, 8) * 2.0**-52),
                        math.ulp(p) * (rng.randint(0, 8) + 0.5) * 2.0 ** rng.randint(0, 60),
                        math.ldexp(mantissa(), math.frexp(p)[1] - math.frexp(mantissa())[1] + rng.randint(-60, 60))))
        if math.isfinite(c):
            assert _bits(golibm._fma(a, b, c)) == _bits(golibm._fma_exact(a, b, c)), (a, b, c)


def test_gos_own_answers_where_c_differs() -> None:
    """Go's documented special cases and quirks that C's library does not share."""
    assert golibm.go_log(5e-324) == pytest.approx(-709.0895657128241)  # amd64's Log reads subnormals as normal
    assert golibm.go_exp(709.78) == math.inf  # exp_amd64.s: 2**1024 after rounding k
    assert golibm.go_pow(-8.0, 1 / 3) != golibm.go_pow(-8.0, 1 / 3)  # NaN
    assert golibm.go_pow(0.0, -3.0) == math.inf and golibm.go_pow(-0.0, -3.0) == -math.inf
    assert golibm.go_pow(-1.0, math.inf) == 1.0
    assert golibm.go_atanh(1.0) == math.inf and golibm.go_atanh(-1.0) == -math.inf
    assert golibm.go_sinh(-1000.0) == -math.inf and golibm.go_cosh(1000.0) == math.inf
    assert golibm.go_tanh(math.inf) == 1.0 and golibm.go_acosh(0.5) != golibm.go_acosh(0.5)
