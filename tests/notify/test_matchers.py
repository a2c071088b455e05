"""Alertmanager's matcher syntax, judged by the real amtool (Alertmanager 0.25, as Debian 12 ships it):
what it accepts, how it splits and unescapes (the sorted route key it prints), and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumon.notify.routing import matchers_key, parse_matchers
from gpumon.regex import RegexError, anchored, compile_go

ACCEPTED = [
    'foo="bar"', "{foo=~bar.*}", '{foo!~"bar.*"}', '{foo="bar", baz!="quux"}', "foo=bar,dings!=bums",
    '{foo = "bar", dings != "bums", }', '{quote="She said: \\"Hi, ladies! That\'s gender-neutral…\\""}',
    'statuscode=~"5.."', "tricky=~~~", 'trickier==\\\\=\\=\\"', '{foo="bar,quux", job="job1"}',
    "{foo=bar}}", "{foo=,bar=}}", "{foo=bar\\t}", "{foo=bar\\n}", "{foo=bar\\}", "{foo=bar\\\\}", "job=",
    '{foo=}b', "{foo=", "a:b=c", 'x=~"(.*-?)*Z"', 'group=~"((?i)PRO).*"', 'v="\\n"',
]
REJECTED = [
    ('job="value', 'matcher value contains unescaped double quote: "value'),
    ('job=value"', 'matcher value contains unescaped double quote: value"'),
    ('contains_unescaped_quote = foo"bar', 'matcher value contains unescaped double quote: foo"bar'),
    ('{invalid-name = "valid label"}', 'bad matcher format: invalid-name = "valid label"'),
    ('{foo=~"invalid[regexp"}', "error parsing regexp: missing closing ]: `[regexp)$`"),
    ('"foo=\\"bar"', 'bad matcher format: "foo=\\"bar"'),
    ("{{foo=", "bad matcher format: {foo="),
    (" {foo=bar}", "bad matcher format: {foo=bar"),
    ("foo=bar,,x=y", "bad matcher format: "),
    ('a=~"a**"', "error parsing regexp: invalid nested repetition operator: `**`"),
]


def _amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.fail("amtool not found: run the tests with `make test`, which installs prometheus-alertmanager")
    return path


def _config(tmp: Path, matcher_lists: list[list[str]]) -> Path:
    routes = [{"receiver": "x", "matchers": ms} for ms in matcher_lists]
    path = tmp / "alertmanager.yml"
    path.write_text(json.dumps({"route": {"receiver": "x", "routes": routes}, "receivers": [{"name": "x"}]}))
    return path


def test_amtool_splits_and_unescapes_as_gpumon(tmp_path: Path) -> None:
    config = _config(tmp_path, [[m] for m in ACCEPTED])
    shown = subprocess.run([_amtool(), "config", "routes", "show", f"--config.file={config}"],
                           capture_output=True, text=True, check=True).stdout
    keys = [line.split("── ", 1)[1].rsplit("  receiver:", 1)[0] for line in shown.splitlines()[3:] if line]
    assert keys == [matchers_key(parse_matchers(m)) for m in ACCEPTED]


@pytest.mark.parametrize(("text", "error"), REJECTED)
def test_amtool_rejects_what_gpumon_rejects_with_the_same_words(text: str, error: str, tmp_path: Path) -> None:
    run = subprocess.run([_amtool(), "check-config", str(_config(tmp_path, [[text]]))], capture_output=True, text=True)
    assert run.returncode == 1 and f"FAILED: {error}\n" in run.stdout
    with pytest.raises(ValueError) as raised:
        parse_matchers(text)
    assert str(raised.value) == error


def test_a_config_entry_may_hold_several_matchers() -> None:
    ms = parse_matchers("foo=bar,dings!=bums")
    assert [(m.name, m.op, m.value) for m in ms] == [("foo", "=", "bar"), ("dings", "!=", "bums")]
    assert parse_matchers('{a="b", c=~"d"}')[1].matches({"c": "d"})


def test_regex_matchers_are_anchored_and_dot_does_not_match_a_newline() -> None:
    (m,) = parse_matchers('job=~"a.b"')
    assert m.matches({"job": "axb"}) and not m.matches({"job": "a\nb"}) and not m.matches({"job": "xaxbx"})


def test_catastrophic_patterns_match_in_linear_time() -> None:
    """`(.*-?)*Z` against a-a-a-...: exponential for a backtracking engine (Python's re would run for
    hours on 30 pairs); RE2 answers in microseconds, also over a megabyte of text."""
    (m,) = parse_matchers('uuid=~"(.*-?)*Z"')
    started = time.perf_counter()
    assert not m.matches({"uuid": "a-" * 500_000})
    assert time.perf_counter() - started < 5  # generous: a backtracking engine would never finish
    assert compile_go("(a|aa)+$").search("a" * 100_000 + "b") is None


def test_go_error_messages_and_what_go_rejects() -> None:
    for pattern, error in (("(", "missing closing ): `(`"), ("[a", "missing closing ]: `[a`"),
                           ("\\C", "invalid escape sequence: `\\C`"), ("x{2,1}", "invalid repeat count: `{2,1}`")):
        with pytest.raises(RegexError) as raised:
            compile_go(pattern)
        assert str(raised.value) == f"error parsing regexp: {error}"
    with pytest.raises(ValueError, match="not valid UTF-8"):
        parse_matchers('a="\ud800"')
    assert not anchored("a.*").matches("a\ud800")  # text that is not Unicode never matches


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parsing_any_text_gives_matchers_or_a_value_error(text: str) -> None:
    try:
        matchers = parse_matchers(text)
    except ValueError:
        return
    for m in matchers:
        m.matches({"alertname": text})
