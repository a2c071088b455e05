"""Prometheus's HTTP query API over the store's in-memory history: `/api/v1/query`, `/query_range`,
`/labels`, `/label/<name>/values` and `/series`, with Prometheus's parameters, JSON shapes and error
format, so the console needs no endpoints of its own and a Grafana can use one gpumon as a Prometheus
data source for a quick look.

The history is what the store keeps (`store.retention`); a query reaching further back says so in the
answer's `warnings`. A query runs on the event loop (the store is not safe to read from another
thread), so each is bounded: at most `max_samples` points loaded and `timeout` of evaluation, two at a
time, and a range query yields to the loop between its steps, so polling and scrapes go on beside it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from gpumon import catalog
from gpumon.config import QueryConfig
from gpumon.rules.promql import (
    EvalError,
    Evaluator,
    Labels,
    Matcher,
    PromQLError,
    Sample,
    Series,
    Value,
    ast,
    compile_expr,
    parse_prom_duration,
)
from gpumon.store import Store

MAX_RESOLUTION = 11_000  # points per series of a range query, as Prometheus limits them
YIELD_EVERY_S = 0.005  # a range query gives the event loop a turn this often


class QueryError(Exception):
    """An answer in Prometheus's error format: {"status": "error", "errorType", "error"}."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def bad_data(message: str) -> QueryError:
    return QueryError(400, "bad_data", message)


class _BoundedStorage:
    """The store as PromQL storage that counts the points a query loads and watches its deadline: both
    checked at each selector, which every step and subquery step goes through."""

    def __init__(self, store: Store, limits: QueryConfig, deadline: float) -> None:
        self.store = store
        self.limits = limits
        self.deadline = deadline
        self.loaded = 0

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return self._bounded(self.store.select(matchers, start, end))

    def select_last(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return self._bounded(self.store.select(matchers, start, end, last_only=True))

    def _bounded(self, found: Iterable[tuple[Labels, Sequence[float], Sequence[float], bool]]) -> list[Series]:
        if time.monotonic() > self.deadline:
            raise QueryError(503, "timeout", "query timed out in expression evaluation")
        out = []
        for labels, times, values, nan_free in found:
            self.loaded += len(times)
            if self.loaded > self.limits.max_samples:
                raise QueryError(422, "execution", "query processing would load too many samples into memory in "
                                 f"query execution (more than {self.limits.max_samples}, web.query.max_samples)")
            out.append(Series(labels, times, values, nan_free))
        return out


class QueryApi:
    def __init__(self, store: Store, retention_s: float, limits: QueryConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_s = retention_s
        self.clock = clock
        self.configure(limits or QueryConfig())

    def configure(self, limits: QueryConfig) -> None:
        """New limits (a reload): queries running keep their slot; new ones wait for the new number."""
        if getattr(self, "limits", None) != limits:
            self.limits = limits
            self._running = asyncio.Semaphore(limits.concurrency)

    # --- /api/v1/query and /api/v1/query_range ----------------------------------------------------

    async def query(self, params: Mapping[str, str]) -> dict[str, Any]:
        expr = _expression(params)
        t = _time(params, "time", self.clock())
        deadline = time.monotonic() + _timeout(params, self.limits.timeout)
        async with self._bounded_turn(deadline):
            value = self._evaluate(expr, t, _BoundedStorage(self.store, self.limits, deadline))
        return self._success(_instant_result(expr.type, value, t), t)

    async def query_range(self, params: Mapping[str, str]) -> dict[str, Any]:
        expr = _expression(params)
        start, end = _time(params, "start", None), _time(params, "end", None)
        step = _step(params)
        if end < start:
            raise bad_data('invalid parameter "end": end timestamp must not be before start time')
        if (end - start) / step > MAX_RESOLUTION:
            raise bad_data(f"exceeded maximum resolution of {MAX_RESOLUTION:,} points per timeseries. Try "
                           "decreasing the query resolution (?step=XX)")
        if expr.type in (ast.STRING, ast.MATRIX):
            kind = "range vector" if expr.type == ast.MATRIX else expr.type
            raise bad_data(f'invalid expression type "{kind}" for range query, must be Scalar or instant Vector')
        deadline = time.monotonic() + _timeout(params, self.limits.timeout)
        storage = _BoundedStorage(self.store, self.limits, deadline)  # its count of points spans every step
        points: dict[Labels, list[list[Any]]] = {}
        async with self._bounded_turn(deadline):
            turn = time.monotonic()
            # In integer milliseconds, as Prometheus steps: start, start + step, ... up to end.
            start_ms, end_ms, step_ms = round(start * 1000), round(end * 1000), max(1, round(step * 1000))
            for t_ms in range(start_ms, end_ms + 1, step_ms):
                t = t_ms / 1000
                value = self._evaluate(expr, t, storage, (start_ms, end_ms))
                for labels, v in ([((), value)] if isinstance(value, float) else
                                  [(s.labels, s.value) for s in cast(list[Sample], value)]):
                    points.setdefault(labels, []).append([_seconds(t), format_value(v)])
                if time.monotonic() - turn > YIELD_EVERY_S:
                    await asyncio.sleep(0)
                    turn = time.monotonic()
        result = [{"metric": dict(labels), "values": values} for labels, values in sorted(points.items())]
        return self._success({"resultType": "matrix", "result": result}, start)

    @staticmethod
    def _evaluate(expr: ast.Node, t: float, storage: _BoundedStorage, edges: tuple[int, int] | None = None
                  ) -> Value:
        try:
            return Evaluator(storage).instant(expr, round(t * 1000), edges)
        except EvalError as exc:
            raise QueryError(422, "execution", str(exc)) from None
        except RecursionError:
            raise QueryError(422, "execution", "the expression is too deep to evaluate") from None

    def _bounded_turn(self, deadline: float) -> _Turn:
        return _Turn(self._running, deadline)

    # --- /api/v1/labels, /api/v1/label/<name>/values, /api/v1/series ------------------------------

    def series(self, params: Mapping[str, str], selectors: list[str]) -> dict[str, Any]:
        if not selectors:
            raise bad_data("no match[] parameter provided")
        start, end = self._window(params)
        found = self._matching(selectors, start, end)
        return self._success([dict(labels) for labels in sorted(found)], start)

    def labels(self, params: Mapping[str, str], selectors: list[str]) -> dict[str, Any]:
        start, end = self._window(params)
        names = {name for labels in self._matching(selectors, start, end) for name, _ in labels}
        return self._success(sorted(names), start)

    def label_values(self, name: str, params: Mapping[str, str], selectors: list[str]) -> dict[str, Any]:
        if not _is_label_name(name):
            raise bad_data(f"invalid label name: {name!r}")
        start, end = self._window(params)
        values = {dict(labels).get(name, "") for labels in self._matching(selectors, start, end)}
        return self._success(sorted(v for v in values if v), start)

    @staticmethod
    def metadata(params: Mapping[str, str]) -> dict[str, Any]:
        """Type, help and unit of gpumon's metrics, from the catalog, as a Prometheus scraping gpumon (in
        OpenMetrics, which it prefers) lists them."""
        metric, limit = params.get("metric"), params.get("limit", "")
        try:
            most = int(limit) if limit else -1
        except ValueError:
            raise bad_data(f'invalid parameter "limit": {limit!r} is not a number') from None
        data: dict[str, list[dict[str, str]]] = {}
        for m in catalog.METRICS:
            # OpenMetrics names a family without its counter's _total or its info's _info suffix.
            family = m.family if m.type is not catalog.MetricType.INFO else m.name.removesuffix("_info")
            if (metric is None or family == metric) and (most < 0 or len(data) < most):
                data[family] = [{"type": m.type.value, "help": m.help, "unit": m.unit}]
        return {"status": "success", "data": data}

    def _window(self, params: Mapping[str, str]) -> tuple[float, float]:
        """[start, end] of a metadata query; left out, the whole history (which warns of nothing)."""
        now = self.clock()
        start, end = _time(params, "start", now - self.retention_s + 1), _time(params, "end", now)
        if end < start:
            raise bad_data('invalid parameter "end": end timestamp must not be before start time')
        return start, end

    def _matching(self, selectors: list[str], start: float, end: float) -> set[Labels]:
        start_ms, end_ms = math.floor(start * 1000), math.ceil(end * 1000)
        groups = [_selector(s) for s in selectors] or [[]]
        found: set[Labels] = set()
        for matchers in groups:
            found.update(labels for labels, *_ in self.store.select(matchers, start_ms, end_ms, last_only=True))
        return found

    # --- answers ------------------------------------------------------------------------------------

    def _success(self, data: Any, earliest: float) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": "success", "data": data}
        oldest = self.clock() - self.retention_s
        if earliest < oldest:
            since = datetime.fromtimestamp(oldest, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            answer["warnings"] = [f"gpumon keeps {self.retention_s:g}s of history in memory (store.retention): "
                                  f"nothing before {since} is available here; ask Prometheus for more"]
        return answer


class _Turn:
    """One of the `concurrency` evaluation slots, waited for no longer than the query's deadline."""

    def __init__(self, slots: asyncio.Semaphore, deadline: float) -> None:
        self.slots = slots
        self.deadline = deadline

    async def __aenter__(self) -> None:
        try:
            await asyncio.wait_for(self.slots.acquire(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            raise QueryError(503, "timeout", "query timed out waiting for other queries to finish") from None

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release()


def error_body(exc: QueryError) -> dict[str, Any]:
    return {"status": "error", "errorType": exc.error_type, "error": str(exc)}


# --- results ----------------------------------------------------------------------------------------

def _instant_result(kind: str, value: Value, t: float) -> dict[str, Any]:
    if isinstance(value, str):
        return {"resultType": "string", "result": [_seconds(t), value]}
    if isinstance(value, float):
        return {"resultType": "scalar", "result": [_seconds(t), format_value(value)]}
    if kind == ast.MATRIX:
        matrix = cast(list[Series], value)
        return {"resultType": "matrix", "result": [
            {"metric": dict(s.labels), "values": [[_seconds(pt / 1000), format_value(v)]
                                                  for pt, v in zip(s.times, s.values, strict=True)]}
            for s in sorted(matrix, key=lambda s: s.labels)]}
    vector = cast(list[Sample], value)
    return {"resultType": "vector", "result": [{"metric": dict(s.labels), "value": [_seconds(t), format_value(s.value)]}
                                               for s in vector]}


def format_value(v: float) -> str:
    """As Prometheus writes a sample value (Go's strconv.FormatFloat(v, 'f', -1, 64)): the shortest
    digits that read back the same, never an exponent; NaN, +Inf, -Inf."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return format(Decimal(repr(v)).normalize(), "f")


def _seconds(t: float) -> float | int:
    """A timestamp as Prometheus writes it: seconds with at most millisecond digits."""
    ms = round(t * 1000)
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


# --- parameters -------------------------------------------------------------------------------------

def _expression(params: Mapping[str, str]) -> ast.Node:
    text = params.get("query")
    if text is None or not text.strip():
        raise bad_data('invalid parameter "query": 1:1: parse error: no expression found in input')
    try:
        return compile_expr(text)
    except PromQLError as exc:
        raise bad_data(f'invalid parameter "query": {exc}') from None


def _time(params: Mapping[str, str], name: str, default: float | None) -> float:
    text = params.get(name)
    if text is None or text == "":
        if default is None:
            raise bad_data(f'invalid parameter "{name}": cannot parse "" to a valid timestamp')
        return default
    try:
        t = float(text)
        if math.isfinite(t):
            return t
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise bad_data(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')


def _seconds_or_duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return parse_prom_duration(text) / 1000


def _step(params: Mapping[str, str]) -> float:
    text = params.get("step", "")
    try:
        step = _seconds_or_duration(text)
    except ValueError:
        raise bad_data(f'invalid parameter "step": cannot parse "{text}" to a valid duration') from None
    if not step > 0 or not math.isfinite(step):
        raise bad_data('invalid parameter "step": zero or negative query resolution step widths are not '
                       "accepted. Try a positive integer")
    return step


def _timeout(params: Mapping[str, str], limit: float) -> float:
    text = params.get("timeout")
    if not text:
        return limit
    try:
        asked = _seconds_or_duration(text)
    except ValueError:
        raise bad_data(f'invalid parameter "timeout": cannot parse "{text}" to a valid duration') from None
    return min(limit, asked) if asked > 0 else limit


def _selector(text: str) -> list[Matcher]:
    try:
        expr = compile_expr(text)
    except PromQLError as exc:
        raise bad_data(f'invalid parameter "match[]": {exc}') from None
    if not isinstance(expr, ast.VectorSelector):
        raise bad_data(f'invalid parameter "match[]": {text!r} is not a series selector')
    return list(expr.matchers)


def _is_label_name(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(c.isalnum() or c == "_" for c in name) \
        and name.isascii()
