"""The doctor's findings as a terminal report (worst first, colour only on a tty) or JSON (the
schema is docs/doctor.schema.json), and the exit status: 0 all ok, 1 a warning, 2 a failure."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from gpumon.doctor.checks import Finding, Verdict

SCHEMA_VERSION = 1
COLOURS = {Verdict.FAIL: "\033[31m", Verdict.WARN: "\033[33m", Verdict.OK: "\033[32m",
           Verdict.NOT_APPLICABLE: "\033[2m"}
RESET = "\033[0m"


@dataclass
class Report:
    findings: list[Finding]
    uuids: dict[int, str]
    backend: str
    capture: str

    @property
    def worst(self) -> Verdict:
        return max((f.verdict for f in self.findings), default=Verdict.OK)

    @property
    def exit_status(self) -> int:
        return self.worst.exit_status

    def ordered(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (-f.verdict, f.gpu if f.gpu is not None else -1, f.check))


def as_json(report: Report) -> str:
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": round(time.time(), 3),
        "backend": report.backend,
        "capture": report.capture or None,
        "status": max(report.worst, Verdict.OK).json_word,
        "exit_status": report.exit_status,
        "findings": [{"check": f.check, "gpu": f.gpu, "uuid": report.uuids.get(f.gpu) if f.gpu is not None else None,
                      "verdict": f.verdict.json_word, "summary": f.summary, "evidence": f.evidence,
                      "next_step": f.next_step or None} for f in report.ordered()],
    }
    return json.dumps(doc, indent=2)


def as_text(report: Report, colour: bool) -> str:
    lines = []
    if report.capture:
        lines.append(f"DEMO DATA: replaying {report.capture}, not reading this host's GPUs.")
    counts = {v: sum(1 for f in report.findings if f.verdict is v) for v in Verdict}
    lines.append(f"gpumon doctor: {counts[Verdict.FAIL]} fail, {counts[Verdict.WARN]} warn, "
                 f"{counts[Verdict.OK]} ok, {counts[Verdict.NOT_APPLICABLE]} not applicable")
    for f in report.ordered():
        word = f.verdict.word.upper().ljust(4)
        if colour:
            word = f"{COLOURS[f.verdict]}{word}{RESET}"
        where = f"GPU {f.gpu}" if f.gpu is not None else "host"
        lines.append(f"{word}  {where:<6} {f.check:<32} {f.summary}")
        if f.verdict >= Verdict.WARN:
            evidence = ", ".join(f"{k}={_short(v)}" for k, v in f.evidence.items() if v not in (None, [], {}))
            if evidence:
                lines.append(f"{'':6}{'':7}{'':33}evidence: {evidence}")
            if f.next_step:
                lines.append(f"{'':6}{'':7}{'':33}next: {f.next_step}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)
