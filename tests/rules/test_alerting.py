"""Alert rules: promtool-format tests that promtool and gpumon must judge alike, and gpumon's
extensions (hysteresis, no-data policy), which Prometheus does not have."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumon.rules.alerting import RuleEngine, State
from gpumon.rules.promql import Evaluator
from gpumon.rules.rulefile import load_rule_files
from gpumon.rules.ruletest import MemoryStorage, expand_values, parse_series, run_test_file
from gpumon.yamlfile import ConfigError

ALERT_TESTS = sorted((Path(__file__).parent / "corpus" / "alerts").glob("*.test.yml"))
BUNDLED = Path(__file__).resolve().parents[2] / "rules"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    return path


def broken_copy(test_file: Path, tmp: Path) -> Path:
    """The test file with one expectation made wrong (an extra label on the first expected alert)."""
    doc = yaml.safe_load(test_file.read_text())
    for test in doc["tests"]:
        for case in test.get("alert_rule_test") or []:
            if case.get("exp_alerts"):
                case["exp_alerts"][0].setdefault("exp_labels", {})["bogus"] = "1"
                break
        else:
            continue
        break
    for rule_file in doc["rule_files"]:
        shutil.copy(test_file.parent / rule_file, tmp / rule_file)
    out = tmp / test_file.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.mark.parametrize("test_file", ALERT_TESTS, ids=lambda p: p.name)
def test_alert_tests_pass_in_gpumon(test_file: Path, tmp_path: Path) -> None:
    assert run_test_file(test_file).failures == []
    assert not run_test_file(broken_copy(test_file, tmp_path)).ok


@pytest.mark.integration
@pytest.mark.parametrize("test_file", ALERT_TESTS, ids=lambda p: p.name)
def test_alert_tests_same_verdict_as_promtool(test_file: Path, tmp_path: Path) -> None:
    for path in (test_file, broken_copy(test_file, tmp_path)):
        theirs = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True)
        assert run_test_file(path).ok == (theirs.returncode == 0), theirs.stdout


# --- the state machine and gpumon's extensions -------------------------------------------------


def engine_for(tmp: Path, rules: str, series: dict[str, str]) -> tuple[RuleEngine, list[int]]:
    path = tmp / "r.yml"
    path.write_text(rules)
    groups = load_rule_files([path])
    storage = MemoryStorage()
    for desc, values in series.items():
        for i, v in enumerate(expand_values(values)):
            if v is not None:
                storage.add(parse_series(desc), i * 60_000, v)
    return RuleEngine(groups, Evaluator(storage), storage.add), [i * 60_000 for i in range(30)]


def states(engine: RuleEngine, times: list[int], until: int) -> list[str]:
    out = []
    for t in times[: until + 1]:
        for g in engine.groups:
            engine.eval_group(g, t)
        alerts = engine.alerts()
        out.append(alerts[0].state.value if alerts else "-")
    return out


LOW_SM = """
groups:
  - name: g
    rules:
      - alert: Low
        expr: sm < 0.6
        for: 2m
        annotations:
          {extra}
"""


def test_for_pending_firing_resolved_and_dropped_after_15m(tmp_path: Path) -> None:
    engine, times = engine_for(tmp_path, LOW_SM.format(extra="{}"), {'sm{gpu="0"}': "0.5x3 0.9x25"})
    seen = states(engine, times, 25)
    assert seen[:5] == ["pending", "pending", "firing", "firing", "inactive"]
    assert seen[19] == "inactive"  # resolved alerts are kept 15 minutes for notifiers...
    assert seen[20] == "-"  # ...then forgotten
    assert engine.alerts() == []


def test_hysteresis_keeps_firing_until_the_resolve_condition_holds(tmp_path: Path) -> None:
    rules = LOW_SM.format(extra="gpumon_resolve_when: sm >= 0.7")
    engine, times = engine_for(tmp_path, rules, {'sm{gpu="0"}': "0.5 0.5 0.5 0.65 0.65 0.75 0.5"})
    assert states(engine, times, 6) == ["pending", "pending", "firing", "firing", "firing", "inactive", "pending"]


def test_hysteresis_does_not_hold_a_pending_alert(tmp_path: Path) -> None:
    rules = LOW_SM.format(extra="gpumon_resolve_when: sm >= 0.7")
    engine, times = engine_for(tmp_path, rules, {'sm{gpu="0"}': "0.5 0.65"})
    assert states(engine, times, 1) == ["pending", "-"]


@pytest.mark.parametrize("policy, expected", [
    ("resolve", ["pending", "pending", "firing", "inactive", "inactive"]),
    ("keep_state", ["pending", "pending", "firing", "firing", "firing"]),
])
def test_no_data_policy_when_the_series_disappears(tmp_path: Path, policy: str, expected: list[str]) -> None:
    rules = LOW_SM.format(extra=f"gpumon_no_data: {policy}")
    engine, times = engine_for(tmp_path, rules, {'sm{gpu="0"}': "0.5 0.5 0.5 stale"})
    assert states(engine, times, 4) == expected


def test_no_data_fire_advances_a_pending_alert(tmp_path: Path) -> None:
    rules = LOW_SM.format(extra="gpumon_no_data: fire")
    engine, times = engine_for(tmp_path, rules, {'sm{gpu="0"}': "0.5 stale"})
    assert states(engine, times, 3) == ["pending", "pending", "firing", "firing"]


def test_no_data_is_not_condition_false(tmp_path: Path) -> None:
    """keep_state must not stop an alert resolving when the data is there and healthy."""
    rules = LOW_SM.format(extra="gpumon_no_data: keep_state")
    engine, times = engine_for(tmp_path, rules, {'sm{gpu="0"}': "0.5 0.5 0.5 0.9"})
    assert states(engine, times, 3) == ["pending", "pending", "firing", "inactive"]


def test_evaluation_error_is_recorded_and_other_rules_go_on(tmp_path: Path) -> None:
    rules = """
groups:
  - name: g
    rules:
      - alert: Bad
        expr: a + on(x) b
      - alert: Good
        expr: a > 0
"""
    engine, _ = engine_for(tmp_path, rules, {'a{x="1",y="1"}': "1", 'a{x="1",y="2"}': "1", 'b{x="1"}': "1"})
    for g in engine.groups:
        engine.eval_group(g, 0)
    health = {s.rule.name: (s.health, s.last_error) for s in engine.states.values()}
    assert health["Bad"][0] == "err" and "many-to-one" in health["Bad"][1]
    assert health["Good"] == ("ok", "")
    assert [a.state for a in engine.alerts()] == [State.FIRING, State.FIRING]


@pytest.mark.parametrize("rules, message", [
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mad_over_time(x[5m])\n",
     "r.yml:5: groups[0].rules[0].expr: function mad_over_time() is not in Prometheus 2.42's PromQL"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x\n        for: soon\n",
     "r.yml:6: groups[0].rules[0].for: not a valid duration"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        record: b\n        expr: x\n",
     "r.yml:4: groups[0].rules[0]: a rule needs exactly one of 'alert' or 'record'"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x\n        gpumon: {}\n",
     "r.yml:6: groups.0.rules.0.gpumon: unknown key"),
    ("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: x\n        annotations:\n"
     "          gpumon_no_data: sometimes\n", "r.yml:7: groups[0].rules[0].annotations.gpumon_no_data"),
    ("groups:\n  - name: g\n    rules:\n      - record: 'bad name'\n        expr: x\n",
     "r.yml:4: groups[0].rules[0].record: invalid metric name"),
    ("groups:\n  - name: g\n    limit: many\n    rules:\n      - alert: A\n        expr: x\n        labels: {a: [1]}\n",
     "r.yml:3: groups.0.limit: Expected `int`, got `str`\nr.yml:7: groups.0.rules.0.labels.a: "
     "Expected `bool | int | float | str`, got `list`"),
    ("groups:\n  - rules: []\n", "r.yml:2: groups.0.name: required key is missing"),
])
def test_load_errors_name_file_line_and_key(tmp_path: Path, rules: str, message: str) -> None:
    path = tmp_path / "r.yml"
    path.write_text(rules)
    with pytest.raises(ConfigError) as info:
        load_rule_files([path])
    assert message in str(info.value).replace(str(tmp_path) + "/", "")


def test_bundled_rules_load_in_gpumon_and_prometheus() -> None:
    groups = load_rule_files(sorted(BUNDLED.glob("*.rules.yml")))
    assert sum(len(g.rules) for g in groups) >= 12
    check = subprocess.run([promtool(), "check", "rules", *map(str, BUNDLED.glob("*.rules.yml"))],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr



_RULE_WORDS = st.sampled_from(["groups:", "- name: g", "rules:", "- alert: A", "- record: r", "expr: x > 1",
                               "expr: rate(x[5m])", "expr: sum(", "for: 5m", "for: soon", "labels:",
                               "annotations:", "summary: '{{ $value }}'", "summary: '{{ nope }}'",
                               "gpumon_no_data: keep_state", "gpumon_resolve_when: x >", "interval: 1m",
                               "  ", "[", "{"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.tuples(st.integers(0, 4), _RULE_WORDS), max_size=14).map(
                     lambda lines: "\n".join("  " * depth + word for depth, word in lines))))
def test_fuzzed_rule_files_load_or_fail_with_a_message(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yml"
    path.write_text(text)
    try:
        load_rule_files([path])
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), str(exc)


def test_alert_state_is_written_only_when_what_a_restart_needs_changes(tmp_path: Path) -> None:
    import sqlite3

    from gpumon.rules.state import AlertStateDB

    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n- name: g\n  rules:\n  - alert: Hot\n    expr: temp > 80\n    for: 2m\n"
                     "    annotations:\n      summary: '{{ $value }}'\n")
    storage = MemoryStorage()
    for i, v in enumerate(expand_values("81 82 83 84 85 70")):
        assert v is not None
        storage.add(parse_series('temp{gpu="0"}'), i * 60_000, v)
    engine = RuleEngine(load_rule_files([rules]), Evaluator(storage), storage.add)
    db = AlertStateDB(tmp_path / "alerts.sqlite")
    states = list(engine.states.values())
    group = engine.groups[0]
    writes = []
    for minute in range(6):
        engine.eval_group(group, minute * 60_000)
        before = db._db.total_changes
        db.save(states)
        writes.append(db._db.total_changes > before)
    # pending at 0 (new), same at 1 (only value and annotation changed), firing at 2, same at 3 and 4,
    # resolved at 5
    assert writes == [True, False, True, False, False, True]
    saved = sqlite3.connect(tmp_path / "alerts.sqlite").execute("SELECT state FROM alerts").fetchall()
    assert saved == [("inactive",)]


async def test_groups_evaluate_right_after_the_round_they_are_due_in(tmp_path: Path) -> None:
    """A group evaluates in the first round after its interval has passed, never between rounds:
    its alerts then see that round's data, and its alert series are in that round's exposition."""
    import asyncio

    from gpumon.rounds import Round, Rounds
    from gpumon.rules.service import RuleService
    from gpumon.store import Store

    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n- name: g\n  interval: 10s\n  rules:\n  - record: x\n    expr: vector(1)\n")
    evaluated: list[float] = []
    service = RuleService(load_rule_files([rules]), Store(10), default_interval_s=10.0, state_dir=None,
                          on_evaluated=lambda alerts: evaluated.append(1.0))
    rounds = Rounds()
    order: list[str] = []
    rounds.subscribe("rules", service.on_round)
    rounds.subscribe("exposition", lambda r: order.append(f"render after {len(evaluated)} evaluations"))
    async with service:
        await asyncio.sleep(0.05)
        assert evaluated == []  # due from the start, but no round has come
        rounds.publish(Round("fast", 1000.0, True))
        assert evaluated == [1.0] and order == ["render after 1 evaluations"]
        rounds.publish(Round("fast", 1005.0, True))  # not due again for 10 s
        rounds.publish(Round("fast", 1010.0, True))
        assert len(evaluated) == 2


async def test_groups_evaluate_on_their_interval_when_rounds_stop_coming(tmp_path: Path) -> None:
    """A hung sampler publishes no rounds; the alert about that (GpumonPollStale) must still fire."""
    import asyncio

    from gpumon.rules.service import RuleService
    from gpumon.store import Store

    rules = tmp_path / "r.yml"
    rules.write_text("groups:\n- name: g\n  interval: 100ms\n  rules:\n  - record: x\n    expr: vector(1)\n")
    evaluated: list[float] = []
    service = RuleService(load_rule_files([rules]), Store(10), default_interval_s=0.1, state_dir=None,
                          on_evaluated=lambda alerts: evaluated.append(1.0))
    async with service:
        await asyncio.sleep(0.65)
    assert 2 <= len(evaluated) <= 4  # every other interval: overdue by a whole one, then evaluated
