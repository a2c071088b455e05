"""The benchmarks run at tiny size on every test run, so they cannot rot. They report; they do not judge."""

from __future__ import annotations

from benchmarks import rules_eval


def test_rules_eval_benchmark_runs() -> None:
    result = rules_eval.run(gpus=2, minutes=1, rounds=2)
    assert result["gpus"] == 2 and result["series"] > 50
    assert result["eval_ms_median"] > 0
