"""Compare gpumon's port of Go's math library (gpumon/rules/promql/golibm.py) with the real promtool 2.42,
bit for bit, over many inputs per function, and record a fixed sample of promtool's answers:
tests/rules/corpus/golibm_cases.json was made this way.

    .venv/bin/python -m tests.rules.record_golibm [--per-function N] [--seed S] [--write]

Inputs (seeded, so reproducible): special values (NaN, ±Inf, ±0, ±1, the extremes, subnormals), random
bit patterns (every magnitude), random values in each function's working range, values a few ulps
from multiples of pi/2 and huge trigonometric arguments, and for `^` integer, half-integer and
fractional exponents of positive and negative bases. Each function is one promtool test group
whose series hold one input each and whose expectation is empty: promtool then prints what it got
with strconv's shortest round-trip 'E' formatting, which gives back the exact float64.

--write keeps, for each function, the inputs where gpumon's old C-library answer differed from
promtool's, the special values and a few others, up to SAMPLE_PER_FUNCTION. It needs a CPU with
AVX2 and FMA, where Go's Exp takes its fused multiply-add path; it then records the functions that
call Exp a second time with promtool run under gdb and Go's `useFMA` cleared, for the other path
(--without-fma compares that path alone). The addresses for that are those of Debian 12's build,
checked by its SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from gpumon.rules.promql import golibm

CASES = Path(__file__).parent / "corpus" / "golibm_cases.json"
SAMPLE_PER_FUNCTION = 40
CHUNK = 1000

UNARY: dict[str, Callable[[float], float]] = {
    "exp": golibm.go_exp, "ln": golibm.go_log, "log2": golibm.go_log2, "log10": golibm.go_log10,
    "sin": golibm.go_sin, "cos": golibm.go_cos, "tan": golibm.go_tan, "asin": golibm.go_asin,
    "acos": golibm.go_acos, "atan": golibm.go_atan, "sinh": golibm.go_sinh, "cosh": golibm.go_cosh,
    "tanh": golibm.go_tanh, "asinh": golibm.go_asinh, "acosh": golibm.go_acosh, "atanh": golibm.go_atanh,
}
BINARY: dict[str, Callable[[float, float], float]] = {"atan2": golibm.go_atan2, "^": golibm.go_pow}


def _c_unary(name: str) -> Callable[[float], float]:
    fn = {"exp": math.exp, "ln": math.log, "log2": math.log2, "log10": math.log10}.get(name) or getattr(math, name)

    def safe(x: float) -> float:
        try:
            return float(fn(x))
        except (ValueError, OverflowError):
            return math.nan
    return safe


def _c_pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan


C_LIBRARY: dict[str, Callable[..., float]] = {**{n: _c_unary(n) for n in UNARY}, "atan2": math.atan2, "^": _c_pow}


def bits(x: float) -> int:
    return int.from_bytes(struct.pack("<d", x), "little")


def from_bits(b: int) -> float:
    return float(struct.unpack("<d", b.to_bytes(8, "little"))[0])


def same(a: float, b: float) -> bool:
    return (a != a and b != b) or bits(a) == bits(b)


SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1e-300, -1e-300,
            5e-324, -5e-324, 2.2250738585072014e-308, -2.2250738585072014e-308, 1.7976931348623157e308,
            -1.7976931348623157e308, 0.7, -0.7, 0.66, 21.0, 0.625, 709.782712893384, 709.78, -745.1, -708.4,
            2.0**28, 2.0**-28, 2.0**29, 2.0**53, 1e300, -1e300, math.pi / 2, math.pi, 1 - 2**-53, 1 + 2**-52]


def _random_double(rng: random.Random) -> float:
    while True:
        x = from_bits(rng.getrandbits(64))
        if x == x:
            return x


def _log_uniform(rng: random.Random, lo: int, hi: int) -> float:
    return rng.choice((-1.0, 1.0)) * rng.random() * 2.0 ** rng.randint(lo, hi)


def _near_half_pi(rng: random.Random) -> float:
    k = rng.choice((rng.randint(1, 20), rng.randint(1, 10**6), rng.randint(1, 2**40)))
    x = k * (math.pi / 2)
    for _ in range(rng.randint(-3, 3)):
        x = math.nextafter(x, math.inf)
    return x * rng.choice((-1.0, 1.0))


def unary_inputs(name: str, rng: random.Random, n: int) -> list[float]:
    ranges: dict[str, Callable[[], float]] = {
        "exp": lambda: rng.uniform(-760, 720), "ln": lambda: abs(_log_uniform(rng, -1074, 1023)),
        "log2": lambda: abs(_log_uniform(rng, -1074, 1023)), "log10": lambda: rng.uniform(0, 10),
        "sin": lambda: rng.uniform(-10, 10), "cos": lambda: rng.uniform(-10, 10), "tan": lambda: rng.uniform(-10, 10),
        "asin": lambda: rng.uniform(-1, 1), "acos": lambda: rng.uniform(-1, 1), "atan": lambda: rng.uniform(-10, 10),
        "sinh": lambda: rng.uniform(-30, 30), "cosh": lambda: rng.uniform(-30, 30), "tanh": lambda: rng.uniform(-3, 3),
        "asinh": lambda: _log_uniform(rng, -30, 40), "acosh": lambda: 1 + abs(_log_uniform(rng, -30, 40)),
        "atanh": lambda: rng.uniform(-1, 1),
    }
    out = list(SPECIALS)
    while len(out) < n:
        pick = rng.random()
        if pick < 0.25:
            out.append(_random_double(rng))
        elif pick < 0.35:
            out.append(_log_uniform(rng, -60, 60))
        elif pick < 0.5 and name in ("sin", "cos", "tan"):
            out.append(_near_half_pi(rng))
        elif pick < 0.6 and name in ("sin", "cos", "tan"):
            out.append(_log_uniform(rng, 28, 1023))
        elif pick < 0.6 and name in ("ln", "log2", "log10"):
            out.append(rng.uniform(0.5, 2.0))
        elif pick < 0.6 and name in ("sinh", "cosh", "exp", "tanh"):
            out.append(rng.uniform(-1, 1))
        else:
            out.append(ranges[name]())
    return out


def pow_inputs(rng: random.Random, n: int) -> list[tuple[float, float]]:
    specials = [*SPECIALS, 3.0, -3.0, 0.25, 1.5, 1023.0, -1074.0, 2.0**63, -(2.0**63), 2.0**64]
    out = [(x, y) for x in specials[:24] for y in specials[:12]]
    while len(out) < n:
        pick = rng.random()
        x = rng.choice((rng.uniform(0, 10), _log_uniform(rng, -40, 40), rng.uniform(-3, 3), _random_double(rng)))
        if pick < 0.3:
            y = float(rng.randint(-64, 64))
        elif pick < 0.45:
            y = float(rng.randint(-2000, 2000))
        elif pick < 0.55:
            y = rng.randint(-40, 40) + 0.5
        elif pick < 0.85:
            y = rng.uniform(-20, 20)
            x = abs(x)
        else:
            y = _random_double(rng) if rng.random() < 0.5 else _log_uniform(rng, -60, 60)
        out.append((x, y))
    return out


def atan2_inputs(rng: random.Random, n: int) -> list[tuple[float, float]]:
    out = [(y, x) for y in SPECIALS[:12] for x in SPECIALS[:12]]
    while len(out) < n:
        pick = rng.random()
        if pick < 0.2:
            out.append((_random_double(rng), _random_double(rng)))
        elif pick < 0.5:
            out.append((_log_uniform(rng, -60, 60), _log_uniform(rng, -60, 60)))
        else:
            out.append((rng.uniform(-10, 10), rng.uniform(-10, 10)))
    return out


def _text(x: float) -> str:
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x)


def _group(expr: str, columns: list[list[float]]) -> dict[str, object]:
    series = []
    for name, column in zip(("a", "b"), columns, strict=False):
        series += [{"series": f'{name}{{i="{i}"}}', "values": _text(v)} for i, v in enumerate(column)]
    return {"interval": "1m", "input_series": series,
            "promql_expr_test": [{"expr": expr, "eval_time": "0", "exp_samples": []}]}


_SAMPLE = re.compile(r'i="(\d+)"\} (\S+?)(?:,|$)')


# Debian 12's /usr/bin/promtool (prometheus 2.42.0+ds-5+deb12u1): math.archExp's entry, math.useFMA
PROMTOOL_SHA256 = "14d9c8acdc5d1321dc2092400111c586f09ac350f23f2383d1679b2bf256e583"
ARCH_EXP, USE_FMA_BYTE = 0x4790A0, 0x321E243
EXP_CALLERS = ("exp", "sinh", "cosh", "tanh", "^")


def _promtool_command(path: Path, without_fma: bool) -> list[str]:
    if not without_fma:
        return ["promtool", "test", "rules", str(path)]
    promtool = shutil.which("promtool") or "promtool"
    digest = hashlib.sha256(Path(promtool).read_bytes()).hexdigest()
    assert digest == PROMTOOL_SHA256, f"{promtool} is not the build whose addresses this knows"
    # stop at Exp's first call (math's init has set useFMA by then), clear it, run on
    return ["gdb", "-batch", "-ex", f"break *{ARCH_EXP:#x}", "-ex", "run",
            "-ex", f"set var *(char*){USE_FMA_BYTE:#x} = 0", "-ex", "delete", "-ex", "continue",
            "--args", promtool, "test", "rules", str(path)]


def promtool_answers(groups: list[dict[str, object]], without_fma: bool = False) -> list[dict[int, float]]:
    """What promtool printed for each group's expression: input index -> float64."""
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": groups}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "golibm.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        run = subprocess.run(_promtool_command(path, without_fma), capture_output=True, text=True, check=False)
    got_lines = [line.strip()[len("got: "):] for line in (run.stdout + run.stderr).splitlines()
                 if line.strip().startswith("got: ")]
    assert len(got_lines) == len(groups), run.stdout[-2000:] + run.stderr[-2000:]
    return [{int(i): float(v) for i, v in _SAMPLE.findall(line)} for line in got_lines]


def compare(n: int, seed: int, without_fma: bool = False) -> dict[str, list[tuple[list[float], float, float, float]]]:
    """Function -> [(inputs, promtool's value, gpumon's, C library's)] over n inputs each; without_fma:
    the functions that call Exp, with Go's and gpumon's Exp on their path without FMA."""
    rng = random.Random(seed)
    plan: list[tuple[str, list[list[float]]]] = []
    for name in UNARY:
        plan.append((name, [unary_inputs(name, rng, n)]))
    pairs = atan2_inputs(rng, n)
    plan.append(("atan2", [[p[0] for p in pairs], [p[1] for p in pairs]]))
    pairs = pow_inputs(rng, n)
    plan.append(("^", [[p[0] for p in pairs], [p[1] for p in pairs]]))
    if without_fma:
        plan = [(name, cols) for name, cols in plan if name in EXP_CALLERS]
    # promtool's query sample limit: at most CHUNK inputs a group, a function's groups merged after
    groups, owners = [], []
    for k, (name, cols) in enumerate(plan):
        for start in range(0, len(cols[0]), CHUNK):
            expr = f"{name}(a)" if name in UNARY else f"a {name} b"
            groups.append(_group(expr, [c[start:start + CHUNK] for c in cols]))
            owners.append((k, start))
    merged: list[dict[int, float]] = [{} for _ in plan]
    for (k, start), got in zip(owners, promtool_answers(groups, without_fma), strict=True):
        merged[k].update({start + i: v for i, v in got.items()})
    out: dict[str, list[tuple[list[float], float, float, float]]] = {}
    saved, golibm.USE_FMA = golibm.USE_FMA, not without_fma
    try:
        for (name, cols), got in zip(plan, merged, strict=True):
            mine_fn = UNARY.get(name) or BINARY[name]
            rows = []
            for i in range(len(cols[0])):
                args = [c[i] for c in cols]
                theirs = got.get(i)
                assert theirs is not None, (name, args)
                rows.append((args, theirs, mine_fn(*args), C_LIBRARY[name](*args)))
            out[name] = rows
    finally:
        golibm.USE_FMA = saved
    return out


def _hex(x: float) -> str:
    return "nan" if x != x else x.hex()


def sample(rows: list[tuple[list[float], float, float, float]], rng: random.Random) -> list[list[str]]:
    """The cases to keep: special inputs, those where C's answer differs, then random others."""
    special = [r for r in rows if all(a in SPECIALS or a != a for a in r[0])]
    differs = [r for r in rows if not same(r[1], r[3]) and r not in special]
    rest = [r for r in rows if r not in special and r not in differs]
    keep = rng.sample(special, min(len(special), 8))
    keep += rng.sample(differs, min(len(differs), SAMPLE_PER_FUNCTION - len(keep) - 8))
    keep += rng.sample(rest, min(len(rest), SAMPLE_PER_FUNCTION - len(keep)))
    return [[*(_hex(a) for a in args), _hex(theirs)] for args, theirs, _, _ in keep]


def report(results: dict[str, list[tuple[list[float], float, float, float]]], label: str) -> int:
    failed = 0
    for name, rows in results.items():
        wrong = [r for r in rows if not same(r[1], r[2])]
        c_off = sum(not same(r[1], r[3]) for r in rows if math.isfinite(r[1]) and math.isfinite(r[3]))
        failed += len(wrong)
        print(f"{label}{name:6} {len(rows):6} inputs: gpumon differs on {len(wrong)}, "
              f"C's library (finite answers) on {c_off}")
        for args_, theirs, mine, _ in wrong[:5]:
            print(f"    {name}{tuple(args_)!r}: promtool {theirs!r} ({_hex(theirs)}), gpumon {mine!r} ({_hex(mine)})")
    return failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-function", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=242)
    parser.add_argument("--without-fma", action="store_true", help="Exp's path without FMA only (gdb)")
    parser.add_argument("--write", action="store_true", help=f"record a sample into {CASES.name}")
    args = parser.parse_args(argv)
    if args.write:
        assert golibm.USE_FMA, "--write records Exp's FMA path: this CPU lacks AVX2 or FMA"
    results = compare(args.per_function, args.seed, args.without_fma)
    failed = report(results, "without FMA: " if args.without_fma else "")
    if args.write:
        without = compare(args.per_function, args.seed + 1, without_fma=True)
        failed += report(without, "without FMA: ")
        rng = random.Random(args.seed)
        cases = {"promtool": "2.42.0+ds-5+deb12u1 (Debian 12, Go 1.19.8), linux/amd64, a CPU with AVX2 and FMA",
                 "compared": {name: len(rows) for name, rows in results.items()},
                 "compared_without_fma": {name: len(rows) for name, rows in without.items()},
                 "cases": {name: sample(rows, rng) for name, rows in results.items()},
                 "cases_without_fma": {name: sample(rows, rng)[:SAMPLE_PER_FUNCTION // 2]
                                       for name, rows in without.items()}}
        text = json.dumps(cases, indent=1)
        text = re.sub(r"\[\s+(\"[^\]]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
        CASES.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
