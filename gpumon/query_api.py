"""Prometheus's HTTP query API over the store's in-memory history: `/api/v1/query`, `/query_range`,
`/labels`, `/label/<name>/values`, `/series` and `/metadata`, with Prometheus's parameters, JSON shapes and error
format, so the console needs no endpoints of its own and a Grafana can use one gpumon as a Prometheus
data source for a quick look.

The history is what the store keeps (`store.retention`); a query reaching further back says so in the
answer's `warnings`. A query first runs on the event loop for at most ON_LOOP_S (the console's take a
fraction of a millisecond); one that needs longer starts again on its own thread (`concurrency` at a
time) reading the store under its lock, so polling and scrapes go on beside it. Each is bounded by
`max_samples` points at once and `timeout`, both checked at every selector and every subquery step, and
stops as soon as its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from gpumon import catalog
from gpumon.config import QueryConfig
from gpumon.rules.promql import (
    LOOKBACK_MS,
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
ON_LOOP_S = 0.002  # a query first runs on the event loop for at most this long (at its next check)
MAX_TIME_S = (2**63 - 1) / 1e6  # Prometheus's timestamps are int64 milliseconds; more would overflow


class QueryError(Exception):
    """An answer in Prometheus's error format: {"status": "error", "errorType", "error"}."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def bad_data(message: str) -> QueryError:
    return QueryError(400, "bad_data", message)


class Budget:
    """What one query may still spend, checked by its storage at each selector and by the evaluator at
    each subquery step: points held at once (counted per step of a range query, as Prometheus counts the
    samples a query has in memory), the deadline, and whether its client is still there."""

    def __init__(self, limits: QueryConfig, deadline: float, cancelled: threading.Event,
                 slice_end: float = math.inf) -> None:
        self.limits = limits
        self.deadline = deadline
        self.cancelled = cancelled
        self.slice_end = slice_end  # an attempt on the event loop gives up here
        self.points = 0

    def spend(self, points: int) -> None:
        self.points += points
        if self.points > self.limits.max_samples:
            raise QueryError(422, "execution", "query processing would load too many samples into memory in "
                             f"query execution (more than {self.limits.max_samples}, web.query.max_samples)")
        now = time.monotonic()
        if now > self.deadline:
            raise QueryError(503, "timeout", "query timed out in expression evaluation")
        if self.cancelled.is_set():
            raise QueryError(503, "canceled", "the client went away")
        if now > self.slice_end:
            raise _LoopSliceUsed


class _LoopSliceUsed(Exception):
    """A query tried on the event loop needs more than its slice: it starts again on a thread."""


class _BoundedStorage:
    """The store as PromQL storage, read under its lock (the event loop writes it meanwhile), each
    selector's points charged to the query's budget."""

    def __init__(self, store: Store, budget: Budget) -> None:
        self.store = store
        self.budget = budget

    def select(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return self._bounded(matchers, start, end, False)

    def select_last(self, matchers: Sequence[Matcher], start: int, end: int) -> list[Series]:
        return self._bounded(matchers, start, end, True)

    def _bounded(self, matchers: Sequence[Matcher], start: int, end: int, last_only: bool) -> list[Series]:
        self.budget.spend(0)
        with self.store.lock:  # the slices are copies: once out, nothing the loop writes reaches them
            found = list(self.store.select(matchers, start, end, last_only))
        self.budget.spend(sum(len(times) for _, times, _, _ in found))
        return [Series(labels, times, values, nan_free) for labels, times, values, nan_free in found]


class QueryApi:
    def __init__(self, store: Store, retention_s: float, limits: QueryConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_s = retention_s
        self.clock = clock
        self.configure(limits or QueryConfig())

    def configure(self, limits: QueryConfig) -> None:
        """New limits (a reload): queries running keep their thread; new ones wait for the new number."""
        if getattr(self, "limits", None) != limits:
            self.limits = limits
            self._running = asyncio.Semaphore(limits.concurrency)
            self._threads = ThreadPoolExecutor(limits.concurrency, thread_name_prefix="gpumon-query")

    # --- /api/v1/query and /api/v1/query_range ----------------------------------------------------

    async def query(self, params: Mapping[str, str]) -> str:
        """The answer's JSON text (encoded on the query's thread too: a big answer is work as well)."""
        return await self._on_thread(params, self._instant)

    async def query_range(self, params: Mapping[str, str]) -> str:
        return await self._on_thread(params, self._range)

    async def _on_thread(self, params: Mapping[str, str], work: Callable[[Mapping[str, str], Budget], Any]) -> str:
        timeout = _timeout(params, self.limits.timeout)
        deadline = time.monotonic() + timeout
        running, threads = self._running, self._threads
        if running.locked():
            try:
                await asyncio.wait_for(running.acquire(), timeout)
            except TimeoutError:
                raise QueryError(503, "timeout", "query timed out waiting for other queries to finish") from None
        else:
            await running.acquire()
        cancelled = threading.Event()
        on_thread = False
        try:
            # Most queries (the console's) take well under a millisecond: on the loop, a thread would only
            # add a wait for the GIL to every scrape. One that needs more starts again on a thread.
            try:
                return json.dumps(work(params, Budget(self.limits, deadline, cancelled, time.monotonic() + ON_LOOP_S)))
            except _LoopSliceUsed:
                pass
            done = asyncio.get_running_loop().run_in_executor(
                threads, lambda: json.dumps(work(params, Budget(self.limits, deadline, cancelled))))
            done.add_done_callback(lambda _: running.release())  # the slot is free when the thread is
            on_thread = True
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:  # the client went away: the thread stops at its next check
                cancelled.set()
                raise
        finally:
            if not on_thread:
                running.release()

    def _instant(self, params: Mapping[str, str], budget: Budget) -> dict[str, Any]:
        expr = _expression(params)
        t = _time(params, "time", self.clock())
        value = self._evaluate(expr, t, budget)
        return self._success(_instant_result(expr.type, value, t), t - reach_s(expr))

    def _range(self, params: Mapping[str, str], budget: Budget) -> dict[str, Any]:
        expr = _expression(params)
        start, end = _time(params, "start", None, wrapped=False), _time(params, "end", None, wrapped=False)
        step = _step(params)
        if end < start:
            raise bad_data('invalid parameter "end": end timestamp must not be before start time')
        if (end - start) / step > MAX_RESOLUTION:
            raise bad_data(f"exceeded maximum resolution of {MAX_RESOLUTION:,} points per timeseries. Try "
                           "decreasing the query resolution (?step=XX)")
        if expr.type in (ast.STRING, ast.MATRIX):
            kind = "range vector" if expr.type == ast.MATRIX else expr.type
            raise bad_data(f'invalid expression type "{kind}" for range query, must be Scalar or instant Vector')
        points: dict[Labels, list[list[Any]]] = {}
        # In integer milliseconds, as Prometheus steps: start, start + step, ... up to end.
        start_ms, end_ms, step_ms = round(start * 1000), round(end * 1000), max(1, round(step * 1000))
        for t_ms in range(start_ms, end_ms + 1, step_ms):
            budget.points = 0  # what one step holds at once
            budget.spend(0)  # the deadline and the client, even for steps that read nothing
            t = t_ms / 1000
            value = self._evaluate(expr, t, budget, (start_ms, end_ms))
            for labels, v in ([((), value)] if isinstance(value, float) else
                              [(s.labels, s.value) for s in cast(list[Sample], value)]):
                points.setdefault(labels, []).append([_seconds(t), format_value(v)])
        result = [{"metric": dict(labels), "values": values} for labels, values in sorted(points.items())]
        return self._success({"resultType": "matrix", "result": result}, start - reach_s(expr))

    def _evaluate(self, expr: ast.Node, t: float, budget: Budget, edges: tuple[int, int] | None = None) -> Value:
        try:
            return Evaluator(_BoundedStorage(self.store, budget), budget=budget.spend).instant(
                expr, round(t * 1000), edges)
        except EvalError as exc:
            raise QueryError(422, "execution", str(exc)) from None
        except RecursionError:
            raise QueryError(422, "execution", "the expression is too deep to evaluate") from None

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
            raise bad_data(f'invalid label name: "{name}"')
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
            raise bad_data("limit must be a number") from None
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


def reach_s(expr: ast.Node) -> float:
    """How far before its evaluation time an expression reads (ranges, subqueries, offsets and the
    5-minute lookback of instant selectors), in seconds: what the history warning compares."""
    reach = 0
    for node in ast.walk(expr):
        if isinstance(node, ast.VectorSelector):
            reach = max(reach, node.offset_ms + LOOKBACK_MS)
        elif isinstance(node, ast.MatrixSelector):
            reach = max(reach, node.selector.offset_ms + node.range_ms)
        elif isinstance(node, ast.Subquery):  # its inner expression's reach adds to its range
            reach = max(reach, node.offset_ms + node.range_ms + round(reach_s(node.expr) * 1000))
    return reach / 1000


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
    """As Prometheus 2.42's API writes a sample value (web/api/v1 marshalFloat): the shortest digits that
    read back the same, with an exponent ('e', as Go writes it: 1e+21, 1.5e-07) below 1e-6 or from 1e21
    on, without one between; NaN, +Inf, -Inf."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v != 0 and (abs(v) < 1e-6 or abs(v) >= 1e21):
        return repr(v)  # Python's repr is Go's 'e' -1 here: shortest digits, a sign and two exponent digits
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


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _time(params: Mapping[str, str], name: str, default: float | None, wrapped: bool = True) -> float:
    """Unix seconds or RFC 3339 with a zone, as Prometheus parses a time; `wrapped`: its parseTimeParam's
    words ('Invalid time value for ...'), which the range query's start and end do without."""
    text = params.get(name)
    if text is None or text == "":
        if default is None:
            raise bad_data(f'invalid parameter "{name}": cannot parse "" to a valid timestamp')
        return default
    t: float | None = None
    try:
        t = float(text)
    except ValueError:
        if _RFC3339.fullmatch(text):
            try:
                t = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                t = None
    # Beyond int64 milliseconds Prometheus's time overflows (1e307 reads as 1970): refused here.
    if t is None or not math.isfinite(t) or abs(t) > MAX_TIME_S:
        why = f'cannot parse "{text}" to a valid timestamp'
        raise bad_data(f'invalid parameter "{name}": ' + (f"Invalid time value for '{name}': {why}" if wrapped
                                                           else why))
    return t


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
    if asked <= 0:  # as Prometheus: a query given no time times out before it starts
        raise QueryError(503, "timeout", "query timed out in query queue")
    return min(limit, asked)


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
