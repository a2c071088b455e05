"""Record PromQL corpus cases from the real promtool 2.42: what tests/rules/corpus/promql_cases.yaml
holds was made this way.

    .venv/bin/python -m tests.rules.record_promtool STUBS.yaml >> tests/rules/corpus/promql_cases.yaml

STUBS.yaml is a list of cases without results (`name`, `data`, `expr`, `eval_time`), `data` naming
a dataset of the corpus. Each case runs as a promtool test group of its own whose expectation is
empty: promtool prints what each expression gave instead (`got: {labels} value, ...`), or
the evaluation error (`err: ...`), and an expression it prints nothing for gave nothing. The cases
come out as corpus YAML, with `exp_samples` or, for an error, `exp_err` (the error text).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gpumon.rules.promql import format_duration, parse_prom_duration

CORPUS = Path(__file__).parent / "corpus" / "promql_cases.yaml"


def _go_unquote(text: str) -> str:
    return str(json.loads(text))


def parse_samples(text: str) -> list[tuple[str, str]]:
    """`{a="1", b="x, }"} 1E+00, {} NaN` -> [('{a="1", b="x, }"}', '1E+00'), ('{}', 'NaN')]."""
    out, i = [], 0
    while i < len(text):
        start = text.index("{", i)
        j, quoted = start + 1, False
        while quoted or text[j] != "}":
            if text[j] == "\\" and quoted:
                j += 1
            elif text[j] == '"':
                quoted = not quoted
            j += 1
        labels = text[start:j + 1]
        end = text.find(", {", j)
        value = text[j + 2:end if end >= 0 else len(text)].strip()
        out.append((labels, value))
        i = end + 2 if end >= 0 else len(text)
    return out


def _value(text: str) -> float | str:
    if text in ("NaN", "+Inf", "-Inf"):
        return text
    v = float(text)
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def run_promtool(dataset: dict[str, Any], cases: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """(expr, time) -> list of (labels, value), or the error text."""
    # One test group per case, as the corpus tests run them: promtool loads a group's samples only up
    # to its last evaluation, so what `x offset -2m` sees depends on the group's other eval times.
    doc = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": dataset["interval"],
        "input_series": [{"series": k, "values": v} for k, v in dataset["series"].items()],
        "promql_expr_test": [{"expr": c["expr"], "eval_time": c["eval_time"], "exp_samples": []}]} for c in cases]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        run = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    out: dict[tuple[str, str], Any] = {}
    lines = (run.stdout + run.stderr).splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith('expr: "'):
            continue
        quoted, _, rest = stripped[len("expr: "):].rpartition(", time: ")
        when, _, err = rest.partition(", err: ")
        key = (_go_unquote(quoted), when.rstrip(","))
        if err:
            out[key] = err
        else:
            got = lines[i + 2].strip()
            assert got.startswith("got: "), lines[i:i + 3]
            out[key] = [(labels, _value(v)) for labels, v in parse_samples(got[len("got: "):])] \
                if got != "got: nil" else []
    return out


def record(stubs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    datasets = yaml.safe_load(CORPUS.read_text())["datasets"]
    by_data: dict[str, list[dict[str, Any]]] = {}
    for stub in stubs:
        by_data.setdefault(stub["data"], []).append(stub)
    results: dict[tuple[str, str, str], Any] = {}
    for name, cases in by_data.items():
        for (expr, when), got in run_promtool(datasets[name], cases).items():
            results[(name, expr, when)] = got
    recorded = []
    for stub in stubs:
        when = format_duration(parse_prom_duration(stub["eval_time"]))
        got = results.get((stub["data"], stub["expr"], when), [])
        case = {k: stub[k] for k in ("name", "data", "expr", "eval_time")}
        if isinstance(got, str):
            case["exp_samples"] = []
            case["exp_err"] = got
        else:
            case["exp_samples"] = [{"labels": labels, "value": value} for labels, value in got]
        recorded.append(case)
    return recorded


def main(argv: list[str]) -> int:
    stubs = yaml.safe_load(Path(argv[1]).read_text())
    sys.stdout.write(yaml.safe_dump(record(stubs), sort_keys=False, allow_unicode=True, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
