"""The expression tree gpumon evaluates: promql-parser's tree checked and converted once, when a rule
loads, into plain frozen nodes. Durations are integer milliseconds, matchers are compiled, parentheses
and unary plus are gone, and an @ modifier is a time or an edge of the query (`start()`/`end()`)."""

from __future__ import annotations

from dataclasses import dataclass

from gpumon.rules.promql.values import Labels, Matcher

# What an expression evaluates to, as Prometheus's parser types it.
SCALAR, VECTOR, MATRIX, STRING = "scalar", "vector", "matrix", "string"


@dataclass(frozen=True, slots=True)
class At:
    """`@ <time>` (ms) or `@ start()` / `@ end()`: for a rule or an instant query both are its time; for
    a range query the range's first and last step."""

    ms: int | None  # None for start()/end()
    edge: str = ""  # "start" or "end" when ms is None


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float
    type: str = SCALAR


@dataclass(frozen=True, slots=True)
class StringLiteral:
    value: str
    type: str = STRING


@dataclass(frozen=True, slots=True)
class VectorSelector:
    name: str | None
    matchers: tuple[Matcher, ...]
    absent_labels: Labels  # what absent() of this selector returns: its equality matchers but the name
    offset_ms: int = 0
    at: At | None = None
    type: str = VECTOR


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    selector: VectorSelector
    range_ms: int
    type: str = MATRIX


@dataclass(frozen=True, slots=True)
class Subquery:
    expr: Node
    range_ms: int
    step_ms: int  # 0: the evaluation interval (promtool: the test file's evaluation_interval)
    offset_ms: int = 0
    at: At | None = None
    type: str = MATRIX


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]
    type: str


@dataclass(frozen=True, slots=True)
class Aggregate:
    op: str
    expr: Node
    param: Node | None
    grouping: tuple[str, ...]  # sorted
    without: bool
    type: str = VECTOR


@dataclass(frozen=True, slots=True)
class Matching:
    """A binary operator's vector matching: on(...) or ignoring(...), and the group_x side."""

    on: bool
    labels: frozenset[str]
    card: str  # "one-to-one", "many-to-one", "one-to-many", "many-to-many" (set operators)
    include: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    lhs: Node
    rhs: Node
    return_bool: bool
    matching: Matching
    type: str


@dataclass(frozen=True, slots=True)
class Negation:
    expr: Node
    type: str


Node = (NumberLiteral | StringLiteral | VectorSelector | MatrixSelector | Subquery | Call | Aggregate | Binary
        | Negation)


def children(e: Node) -> tuple[Node, ...]:
    if isinstance(e, MatrixSelector):
        return (e.selector,)
    if isinstance(e, (Subquery, Negation)):
        return (e.expr,)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Aggregate):
        return (e.expr,) if e.param is None else (e.param, e.expr)
    if isinstance(e, Binary):
        return (e.lhs, e.rhs)
    return ()


def walk(e: Node) -> list[Node]:
    """Every node of the tree, parents before children."""
    out, stack = [], [e]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(children(node)))
    return out
