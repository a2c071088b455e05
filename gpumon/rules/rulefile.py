"""Rule files in Prometheus's format, loaded and checked completely before anything runs.

`groups[]` with `name`, `interval`, `limit` and `rules[]` (`alert` or `record`, `expr`, `for`,
`keep_firing_for`, `labels`, `annotations`). Every problem is reported with file:line and the key.

gpumon's extensions are annotations with a `gpumon_` prefix, because Prometheus 2.x rejects any
unknown key in a rule (`field gpumon not found in type rulefmt.RuleNode`) while annotations are
free-form, so the same file loads into Prometheus unchanged:

- `gpumon_resolve_when`: a PromQL condition that must hold before a firing alert resolves
  (hysteresis: fire below 60 %, resolve only above 70 %).
- `gpumon_no_data`: `resolve` (Prometheus's behaviour), `keep_state` or `fire` - what happens to an
  active alert when the series its expression reads disappear (a lost GPU must not silently resolve).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gpumon.rules.gotemplate import Template, TemplateError, compile_template
from gpumon.rules.promql import PromQLError, compile_expr, parse_prom_duration
from gpumon.yamlfile import ConfigError, KeyPath, load_yaml, validate

RESOLVE_WHEN = "gpumon_resolve_when"
NO_DATA = "gpumon_no_data"
NO_DATA_POLICIES = ("resolve", "keep_state", "fire")
EXTENSIONS = (RESOLVE_WHEN, NO_DATA)
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class _Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    alert: str | None = None
    record: str | None = None
    expr: str | int | float
    for_: str | None = msgspec.field(default=None, name="for")
    keep_firing_for: str | None = None
    labels: dict[str, str | int | float | bool] = {}
    annotations: dict[str, str | int | float | bool] = {}


class _Group(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    interval: str | None = None
    limit: int | None = None
    rules: list[_Rule] = []


class _File(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    groups: list[_Group] = []


@dataclass
class AlertRule:
    name: str
    expr_text: str
    expr: Any
    for_ms: int
    keep_firing_for_ms: int
    labels: dict[str, Template]
    annotations: dict[str, Template]
    label_texts: dict[str, str]
    annotation_texts: dict[str, str]
    resolve_when_text: str | None = None
    resolve_when: Any = None
    no_data: str = "resolve"
    where: str = ""


@dataclass
class RecordRule:
    name: str
    expr_text: str
    expr: Any
    labels: dict[str, str]
    where: str = ""


@dataclass
class RuleGroup:
    name: str
    file: str
    interval_ms: int | None
    limit: int | None
    rules: list[AlertRule | RecordRule] = field(default_factory=list)


def expand_globs(patterns: list[str], base: Path | None = None) -> list[Path]:
    """Rule file paths for glob patterns (relative ones against `base`); a pattern matching nothing
    is an error, so a typo does not silently disable alerting."""
    paths: list[Path] = []
    for pattern in patterns:
        full = str(base / pattern) if base is not None and not Path(pattern).is_absolute() else pattern
        matches = sorted(glob.glob(full))
        if not matches:
            raise ConfigError(f"{pattern}: no rule file matches")
        paths.extend(Path(m) for m in matches)
    return paths


def load_rule_files(paths: list[Path]) -> list[RuleGroup]:
    """Load and check rule files; raises ConfigError listing every problem with file:line."""
    groups: list[RuleGroup] = []
    problems: list[str] = []
    for path in paths:
        try:
            groups.extend(_load(path))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return groups


def _load(path: Path) -> list[RuleGroup]:
    data, lines = load_yaml(path)
    doc = validate(_File, data if data is not None else {}, path, lines)
    problems: list[str] = []
    out = []
    seen: set[str] = set()

    def problem(at: KeyPath, message: str) -> None:
        line = _line(lines, at)
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in at).replace(".[", "[")
        problems.append(f"{path}:{line}: {key}: {message}")

    for gi, g in enumerate(doc.groups):
        gat: KeyPath = ("groups", gi)
        if g.name in seen:
            problem((*gat, "name"), f"group name {g.name!r} repeated in this file")
        seen.add(g.name)
        interval = _duration(g.interval, (*gat, "interval"), problem)
        group = RuleGroup(g.name, str(path), interval, g.limit)
        for ri, r in enumerate(g.rules):
            rule = _rule(r, (*gat, "rules", ri), problem, f"{path}:{_line(lines, (*gat, 'rules', ri))}")
            if rule is not None:
                group.rules.append(rule)
        out.append(group)
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def _rule(r: _Rule, at: KeyPath, problem: Any, where: str) -> AlertRule | RecordRule | None:
    if (r.alert is None) == (r.record is None):
        problem(at, "a rule needs exactly one of 'alert' or 'record'")
        return None
    expr_text = str(r.expr)
    try:
        expr = compile_expr(expr_text)
    except PromQLError as exc:
        problem((*at, "expr"), str(exc))
        expr = None
    labels = {k: _text(v) for k, v in r.labels.items()}
    for k in labels:
        if not _LABEL_NAME.fullmatch(k) or k.startswith("__"):
            problem((*at, "labels", k), f"invalid label name {k!r}")
    if r.record is not None:
        if not _METRIC_NAME.fullmatch(r.record):
            problem((*at, "record"), f"invalid metric name {r.record!r}")
        for key in ("for_", "keep_firing_for"):
            if getattr(r, key) is not None:
                problem((*at, key.rstrip("_")), "only alerting rules take this key")
        if r.annotations:
            problem((*at, "annotations"), "only alerting rules take annotations")
        return RecordRule(r.record, expr_text, expr, labels, where) if expr is not None else None
    assert r.alert is not None
    annotations = {k: _text(v) for k, v in r.annotations.items()}
    for k in annotations:
        if not _LABEL_NAME.fullmatch(k):
            problem((*at, "annotations", k), f"invalid annotation name {k!r}")
    label_templates = _templates(labels, (*at, "labels"), problem, r.alert)
    # Extension annotations stay annotations (rendered literally), as they are in Prometheus, so the
    # alerts gpumon and Prometheus produce from one file are identical.
    annotation_templates = _templates(annotations, (*at, "annotations"), problem, r.alert)
    no_data = annotations.get(NO_DATA, "resolve")
    if no_data not in NO_DATA_POLICIES:
        problem((*at, "annotations", NO_DATA), f"{no_data!r} is not one of {', '.join(NO_DATA_POLICIES)}")
    resolve_when_text = annotations.get(RESOLVE_WHEN)
    resolve_when = None
    if resolve_when_text is not None:
        try:
            resolve_when = compile_expr(resolve_when_text)
        except PromQLError as exc:
            problem((*at, "annotations", RESOLVE_WHEN), str(exc))
    for_ms = _duration(r.for_, (*at, "for"), problem) or 0
    keep_ms = _duration(r.keep_firing_for, (*at, "keep_firing_for"), problem) or 0
    if expr is None:
        return None
    return AlertRule(r.alert, expr_text, expr, for_ms, keep_ms, label_templates, annotation_templates,
                     labels, annotations, resolve_when_text, resolve_when, no_data, where)


def _templates(texts: dict[str, str], at: KeyPath, problem: Any, alert: str) -> dict[str, Template]:
    out = {}
    for k, text in texts.items():
        try:
            out[k] = compile_template(text, alert_name=alert)  # error texts name the alert, as Prometheus's do
        except TemplateError as exc:
            problem((*at, k), f"template: {exc}")
    return out


def _duration(text: str | None, at: KeyPath, problem: Any) -> int | None:
    if text is None:
        return None
    try:
        return parse_prom_duration(text)
    except ValueError as exc:
        problem(at, str(exc))
        return None


def _text(v: str | int | float | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _line(lines: dict[KeyPath, int], at: KeyPath) -> int:
    while at and at not in lines:
        at = at[:-1]
    return lines.get(at, 1)


def longest_ranges(groups: list[RuleGroup]) -> dict[str, int]:
    """For each metric name a rule reads into the past, the longest stretch (ms): range plus offset,
    plus the range and offset of the subqueries around it. How much history the store must keep for it
    (an instant selector also needs the lookback, which the store adds). An @ time is absolute: what it
    reads is there only if it falls within this history."""
    from gpumon.rules.promql import ast

    out: dict[str, int] = {}

    def walk(e: ast.Node, extra: int) -> None:
        if isinstance(e, (ast.VectorSelector, ast.MatrixSelector)):
            vs = e.selector if isinstance(e, ast.MatrixSelector) else e
            span = extra + vs.offset_ms + (e.range_ms if isinstance(e, ast.MatrixSelector) else 0)
            if vs.name and (span > 0 or isinstance(e, ast.MatrixSelector)):
                out[vs.name] = max(out.get(vs.name, 0), span)
            return
        if isinstance(e, ast.Subquery):
            extra += e.range_ms + max(0, e.offset_ms)
        for child in ast.children(e):
            walk(child, extra)

    for g in groups:
        for r in g.rules:
            walk(r.expr, 0)
            if isinstance(r, AlertRule) and r.resolve_when is not None:
                walk(r.resolve_when, 0)
    return out
