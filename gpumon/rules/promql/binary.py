"""Binary operators between scalars and instant vectors: arithmetic (with atan2), comparisons with and
without `bool`, set operators, and vector matching with on/ignoring and group_left/group_right, as
Prometheus 2.42's VectorBinop, VectorscalarBinop and scalarBinop compute them."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from gpumon.rules.promql.ast import Matching
from gpumon.rules.promql.golibm import go_atan2, go_pow
from gpumon.rules.promql.gomath import float_div, go_fmod
from gpumon.rules.promql.parse import ARITHMETIC, COMPARISON
from gpumon.rules.promql.values import NAME, EvalError, Labels, Sample, Vector

DROPS_NAME = ARITHMETIC - {"atan2"}  # Prometheus 2.42's shouldDropMetricName: atan2 keeps the name


def elem(op: str, a: float, b: float) -> tuple[float, bool]:
    """Value and keep-flag of `a op b`, with IEEE results where Python would raise."""
    if op == "+":
        return a + b, True
    if op == "-":
        return a - b, True
    if op == "*":
        return a * b, True
    if op == "/":
        return float_div(a, b), True
    if op == "%":
        return go_fmod(a, b), True
    if op == "^":
        return go_pow(a, b), True
    if op == "atan2":
        return go_atan2(a, b), True
    if op == "==":
        return a, a == b
    if op == "!=":
        return a, a != b
    if op == ">":
        return a, a > b
    if op == "<":
        return a, a < b
    if op == ">=":
        return a, a >= b
    return a, a <= b


def scalar_binop(op: str, a: float, b: float) -> float:
    value, keep = elem(op, a, b)
    if op in COMPARISON:
        return 1.0 if keep else 0.0  # the parser requires bool between scalars
    return value


def drop_name(labels: Labels) -> Labels:
    return tuple(p for p in labels if p[0] != NAME)


def vector_scalar(op: str, vec: Vector, scalar: float, swap: bool, return_bool: bool, t: int) -> Vector:
    drop = op in DROPS_NAME or return_bool
    out = []
    for s in vec:
        a, b = (scalar, s.value) if swap else (s.value, scalar)
        value, keep = elem(op, a, b)
        if op in COMPARISON and swap:
            value = b
        if return_bool:
            value, keep = (1.0 if keep else 0.0), True
        if keep:
            out.append(Sample(drop_name(s.labels) if drop else s.labels, value, t))
    return out


def signature(labels: Labels, on: bool, names: AbstractSet[str]) -> Labels:
    if on:
        return tuple((k, v) for k, v in labels if k in names)
    return tuple((k, v) for k, v in labels if k not in names and k != NAME)


def set_op(op: str, lhs: Vector, rhs: Vector, on: bool, names: AbstractSet[str]) -> Vector:
    if op == "and":
        if not lhs or not rhs:
            return []
        rsigs = {signature(s.labels, on, names) for s in rhs}
        return [s for s in lhs if signature(s.labels, on, names) in rsigs]
    if op == "unless":
        if not lhs or not rhs:
            return lhs
        rsigs = {signature(s.labels, on, names) for s in rhs}
        return [s for s in lhs if signature(s.labels, on, names) not in rsigs]
    if not lhs or not rhs:
        return lhs + rhs
    lsigs = {signature(s.labels, on, names) for s in lhs}
    return lhs + [s for s in rhs if signature(s.labels, on, names) not in lsigs]


def vector_binop(op: str, lhs: Vector, rhs: Vector, m: Matching, return_bool: bool, t: int) -> Vector:
    if not lhs or not rhs:
        return []
    card, on, names = m.card, m.on, m.labels
    if card == "one-to-many":
        lhs, rhs = rhs, lhs
    right: dict[Labels, Sample] = {}
    for s in rhs:
        sig = signature(s.labels, on, names)
        if sig in right:
            side = "left" if card == "one-to-many" else "right"
            raise EvalError(f"found duplicate series for the match group {_fmt(sig)} on the {side} hand-side of "
                            f"the operation: [{_fmt(s.labels)}, {_fmt(right[sig].labels)}];many-to-many matching "
                            "not allowed: matching labels must be unique on one side")
        right[sig] = s
    matched: dict[Labels, set[Labels]] = {}
    out = []
    for ls in lhs:
        sig = signature(ls.labels, on, names)
        rs = right.get(sig)
        if rs is None:
            continue
        a, b = ls.value, rs.value
        if card == "one-to-many":
            a, b = b, a
        value, keep = elem(op, a, b)
        if return_bool:
            value = 1.0 if keep else 0.0
        elif not keep:
            continue
        labels = _result_labels(ls.labels, rs.labels, op, m)
        if return_bool:
            labels = drop_name(labels)
        inserted = matched.get(sig)
        if card == "one-to-one":
            if inserted is not None:
                raise EvalError("multiple matches for labels: many-to-one matching must be explicit "
                                "(group_left/group_right)")
            matched[sig] = set()
        else:
            if inserted is None:
                inserted = matched[sig] = set()
            elif labels in inserted:
                raise EvalError("multiple matches for labels: grouping labels must ensure unique matches")
            inserted.add(labels)
        out.append(Sample(labels, value, t))
    return out


def _result_labels(lhs: Labels, rhs: Labels, op: str, m: Matching) -> Labels:
    labels = dict(lhs)
    if op in DROPS_NAME:
        labels.pop(NAME, None)
    if m.card == "one-to-one":
        if m.on:
            labels = {k: v for k, v in labels.items() if k in m.labels}
        else:
            for n in m.labels:
                labels.pop(n, None)
    r = dict(rhs)
    for n in m.include:
        if r.get(n):
            labels[n] = r[n]
        else:
            labels.pop(n, None)
    return tuple(sorted(labels.items()))


def _fmt(labels: Labels) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"
