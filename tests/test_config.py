"""The daemon's configuration: defaults, the YAML file, flags, and errors that name file:line and key."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumon.config import DEFAULT_PORT, Config, Listen, load_config, parse_duration, parse_listen
from gpumon.sources.replay import MAX_GPUS
from gpumon.yamlfile import MAX_NODES, ConfigError, load_yaml


def write(tmp_path: Path, text: str, name: str = "gpumon.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


FULL = """\
# every setting, none at its default
backend: replay:demo,loop,speed=2,gpus=4
state_dir: /srv/gpumon
web:
  listen: 127.0.0.1:9999
  config_file: /etc/gpumon/web.yml
sampler:
  fast_interval: 500ms
  slow_interval: 1m30s
  deadline: 250ms
metrics:
  process_pids: true
store:
  retention: 1h
log:
  level: debug
  format: json
"""


# --- defaults and a full file ------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.backend == "nvml"
    assert config.state_dir == Path("/var/lib/gpumon")
    assert config.web.listen == Listen("0.0.0.0", DEFAULT_PORT)
    assert config.web.config_file is None
    assert (config.sampler.fast_interval, config.sampler.slow_interval) == (1.0, 30.0)
    assert config.sampler.deadline is None
    assert config.metrics.process_pids is False
    assert config.store.retention == 600.0
    assert (config.log.level, config.log.format) == ("info", "auto")
    assert config.opt_ins == frozenset()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)) == Config()


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.backend == "replay:demo,loop,speed=2,gpus=4"
    assert config.state_dir == Path("/srv/gpumon")
    assert config.web.listen == Listen("127.0.0.1", 9999)
    assert config.web.config_file == Path("/etc/gpumon/web.yml")
    assert config.sampler.fast_interval == pytest.approx(0.5)
    assert config.sampler.slow_interval == pytest.approx(90.0)
    assert config.sampler.deadline == pytest.approx(0.25)
    assert config.metrics.process_pids is True
    assert config.store.retention == pytest.approx(3600.0)
    assert (config.log.level, config.log.format) == ("debug", "json")
    assert config.opt_ins == frozenset({"process_pids"})


def test_config_is_frozen() -> None:
    config = load_config(None)
    with pytest.raises(AttributeError):  # msgspec's frozen structs
        config.backend = "auto"  # type: ignore[misc]


def test_nested_sections_are_frozen_too() -> None:
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.sampler.fast_interval = 2.0  # type: ignore[misc]


def test_pydantic_is_not_imported() -> None:
    """msgspec validates the files; pydantic (~9 MiB of RSS) must not come back through an import."""
    import subprocess
    import sys

    code = "import sys, gpumon.cli, gpumon.daemon; print(sorted(m for m in sys.modules if 'pydantic' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_section_with_every_setting_commented_out_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  # fast_interval: 2s\nweb:\nlog:\n")
    assert load_config(path) == Config()
    # and a flag still lands in it
    assert load_config(path, {"fast_interval": "2s"}).sampler.fast_interval == 2.0


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir: state\nweb:\n  config_file: web.yml\n")
    config = load_config(path)
    assert config.web.config_file == tmp_path / "web.yml"
    assert config.state_dir == tmp_path / "state"
    # a flag is relative to the working directory, as the shell meant it
    assert load_config(path, {"web_config": "other.yml"}).web.config_file == Path("other.yml")
    assert load_config(write(tmp_path, "web:\n  config_file: /abs/web.yml\n")).web.config_file == Path("/abs/web.yml")


def test_yaml_keys_are_their_source_text(tmp_path: Path) -> None:
    # YAML 1.1 would read `on` as True; the error must name the key as written
    assert "on: unknown key" in error_of(write(tmp_path, "on: 1\n"))
    assert "010: unknown key" in error_of(write(tmp_path, "010: 1\n"))


# --- errors name file:line and the dotted key --------------------------------------------------


def test_unknown_nested_key_names_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: nvml\nsampler:\n  fast_interval: 1s\n  fast_intervall: 2s\n")
    message = error_of(path)
    assert f"{path}:4: sampler.fast_intervall: unknown key" in message
    assert message.count("\n") == 0  # one problem, one line


def test_odd_keys_are_quoted_so_a_problem_stays_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"a\\rb": 1\n"": 2\n"x.y": 3\n')
    assert error_of(path).splitlines() == [f"{path}:1: 'a\\rb': unknown key", f"{path}:2: '': unknown key",
                                           f"{path}:3: 'x.y': unknown key"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "\n\nlisten: :9948\n")
    assert f"{path}:3: listen: unknown key" in error_of(path)


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  fast_interval: fast\nlog:\n  level: verbose\n  colour: true\n")
    lines = error_of(path).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:2: sampler.fast_interval: ")
    assert lines[1].startswith(f"{path}:4: log.level: ")
    assert lines[2] == f"{path}:5: log.colour: unknown key"


def test_every_problem_in_nested_lists_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, """\
state_dir: 7
rules:
  files: x.yml
  external_labels: {a: [1], b: ok}
notify:
  receivers:
    - name: a
      webhook: {url: http://x, url_file: /y}
    - name: b
    - webhook: {url: http://x}
  route:
    continue: maybe
  mqtt: {}
""")
    assert error_of(path).splitlines() == [
        f"{path}:1: state_dir: Expected a path (`str`), got `int`",
        f"{path}:3: rules.files: Expected `list`, got `str`",
        f"{path}:4: rules.external_labels.a: Expected `str`, got `list`",
        f"{path}:8: notify.receivers.0.webhook: a webhook needs exactly one of url or url_file",
        f"{path}:9: notify.receivers.1: receiver 'b' needs exactly one of webhook or slack",
        f"{path}:10: notify.receivers.2.name: required key is missing",
        f"{path}:12: notify.route.continue: Expected `bool`, got `str`",
        f"{path}:13: notify.mqtt.broker: required key is missing",
    ]


def test_a_section_that_is_not_a_mapping_or_list(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler: []\nnotify:\n  receivers: {a: 1}\n")
    assert error_of(path).splitlines() == [f"{path}:1: sampler: Expected `mapping`, got `list`",
                                           f"{path}:3: notify.receivers: Expected `list`, got `mapping`"]


def test_bad_duration_names_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  slow_interval: 30s\n  fast_interval: fast\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: sampler.fast_interval: ")
    assert "'fast' is not a duration" in message
    assert "Value error" not in message


def test_bad_value_in_flow_mapping_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "log: {level: info}\nstore: {retention: -5s}\n")
    assert error_of(path).startswith(f"{path}:2: store.retention: ")


def test_missing_value_of_a_nested_key_names_the_key_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  fast_interval:\n")
    assert error_of(path).startswith(f"{path}:2: sampler.fast_interval: ")


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: nvml\nsampler: 5\n")
    message = error_of(path, {"fast_interval": "2s"})
    assert message.startswith(f"{path}:2: sampler: ")


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  fast_interval: 1s\n  fast_interval: 2s\n")
    assert error_of(path) == f"{path}:3: sampler.fast_interval: duplicate key"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: nvml\nsampler:\n  fast_interval: [1s\n  slow_interval: 30s\nlog: x\n")
    message = error_of(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: invalid YAML: ", message), message
    path = write(tmp_path, "a: 1\n b: 2\n")
    assert error_of(path).startswith(f"{path}:2: invalid YAML: ")
    path = write(tmp_path, "a: 1\n\tb: 2\n")
    assert error_of(path).startswith(f"{path}:2: invalid YAML: ")


def test_forbidden_character_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: nvml\nlog:\n  level: \x07\n")
    assert error_of(path) == f"{path}:3: invalid YAML: character #x0007 is not allowed"


def test_several_documents_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: nvml\n---\nbackend: auto\n")
    assert error_of(path).startswith(f"{path}:2: invalid YAML: ")


@pytest.mark.parametrize("text", ["- backend: nvml\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:1: the configuration must be a mapping of keys"


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("log:\n  level: !!int abc\n", 2, "'abc' is not a valid int"),
    ("store:\n  retention: !!float x\n", 2, "'x' is not a valid float"),
    ("a: !!timestamp nope\n", 1, "'nope' is not a valid timestamp"),
    ("a: !custom x\n", 1, "could not determine a constructor for the tag '!custom'"),
    ("base: &b {fast_interval: 2s}\nsampler:\n  <<: *b\n", 3, "merge keys (<<) are not supported"),
    ("? [a, b]\n: 1\n", 1, "keys must be plain scalars"),
    ("!!binary aGk=: 1\n", 1, "keys must be plain scalars"),
    ("a: &x [1, *x]\n", 1, "an alias refers to a value that contains it"),
    ("a: &x {b: *x}\n", 1, "an alias refers to a value that contains it"),
])
def test_yaml_values_that_cannot_be_built(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}:{line}: {problem}"


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error_of(path) == f"{path}: invalid YAML: nested too deeply"


def test_alias_bomb_is_stopped(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    assert f"too many values (more than {MAX_NODES}" in error_of(path)


def test_aliases_are_expanded(tmp_path: Path) -> None:
    data, lines = load_yaml(write(tmp_path, "d: &d 2s\nsampler:\n  fast_interval: *d\n  slow_interval: *d\n"))
    assert data == {"d": "2s", "sampler": {"fast_interval": "2s", "slow_interval": "2s"}}
    assert lines[("sampler", "slow_interval")] == 4


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert error_of(missing) == f"{missing}: file not found"
    assert error_of(tmp_path) == f"{tmp_path}: not a regular file"
    fifo = tmp_path / "fifo.yml"
    os.mkfifo(fifo)
    assert error_of(fifo) == f"{fifo}: not a regular file"  # would block for ever if it were read
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"backend: \xff\xfe\n")
    assert error_of(binary).startswith(f"{binary}: cannot read: ")


def test_slow_interval_shorter_than_fast_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  fast_interval: 10s\n  slow_interval: 5s\n")
    assert error_of(path) == (f"{path}:3: sampler.slow_interval: must not be shorter than "
                              "sampler.fast_interval (10s)")
    # equal is fine
    assert load_config(write(tmp_path, "sampler: {fast_interval: 5s, slow_interval: 5s}\n")).sampler.slow_interval == 5


def test_slow_interval_check_with_defaults_and_flags(tmp_path: Path) -> None:
    assert "sampler.slow_interval: must not be shorter" in error_of(None, {"fast_interval": "1m"})
    path = write(tmp_path, "sampler:\n  slow_interval: 10s\n")
    assert error_of(path, {"fast_interval": "20s"}).startswith(f"{path}:2: sampler.slow_interval: ")
    assert error_of(path, {"slow_interval": "500ms"}).startswith("--slow-interval: sampler.slow_interval: ")
    # an invalid fast interval is reported once, not as a comparison too
    assert error_of(None, {"fast_interval": "x"}).count("\n") == 0
    # another invalid setting in the section does not hide the comparison
    path = write(tmp_path, "sampler:\n  fast_interval: 10s\n  slow_interval: 5s\n  deadline: 0s\n")
    assert error_of(path).splitlines() == [
        f"{path}:4: sampler.deadline: must be greater than zero",
        f"{path}:3: sampler.slow_interval: must not be shorter than sampler.fast_interval (10s)"]


# --- flags ---------------------------------------------------------------------------------------


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path, {
        "fast_interval": "2s", "listen": ":1234", "log_level": "warning", "backend": "nvml",
        "process_pids": None,  # an absent flag leaves the file's value
        "retention": 120,
    })
    assert config.sampler.fast_interval == 2.0
    assert config.sampler.slow_interval == 90.0
    assert config.web.listen == Listen("0.0.0.0", 1234)
    assert config.log.level == "warning"
    assert config.log.format == "json"
    assert config.backend == "nvml"
    assert config.metrics.process_pids is True
    assert config.store.retention == 120.0


def test_flags_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, {"web_config": str(tmp_path / "web.yml"), "state_dir": "/tmp/s", "poll_deadline": "1s"})
    assert config.web.config_file == tmp_path / "web.yml"
    assert config.state_dir == Path("/tmp/s")
    assert config.sampler.deadline == 1.0


def test_flags_do_not_change_the_callers_dict() -> None:
    overrides = {"fast_interval": "2s"}
    load_config(None, overrides)
    assert overrides == {"fast_interval": "2s"}


def test_invalid_flag_value_is_reported_as_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "sampler:\n  fast_interval: 1s\n")
    message = error_of(path, {"fast_interval": "fast"})
    assert message.startswith("--fast-interval: sampler.fast_interval: 'fast' is not a duration")
    assert str(path) not in message
    assert error_of(None, {"listen": "nocolon"}).startswith("--listen: web.listen: ")
    assert error_of(None, {"log_format": "xml"}).startswith("--log-format: log.format: ")


def test_file_error_and_flag_error_together(tmp_path: Path) -> None:
    path = write(tmp_path, "log:\n  level: loud\n")
    lines = error_of(path, {"retention": "0s"}).splitlines()
    assert sorted(lines) == sorted([f"{path}:2: log.level: 'loud' is not 'debug', 'info', 'warning' or 'error'",
                                    "--retention: store.retention: must be greater than zero"])


# --- backend -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [
    "nvml", "auto", "replay:demo", "replay:demo,loop,speed=2,gpus=4", "replay:/some/capture",
    f"replay:demo,gpus={MAX_GPUS}", "replay:demo,speed=1000",
])
def test_valid_backends(backend: str) -> None:
    assert load_config(None, {"backend": backend}).backend == backend


@pytest.mark.parametrize(("backend", "problem"), [
    ("replay:demo,fast", "unknown replay option 'fast'"),
    ("replay:demo,speed=0", "bad replay option 'speed=0'"),
    ("replay:demo,speed=x", "bad replay option 'speed=x'"),
    ("replay:demo,gpus=0", "bad replay option 'gpus=0'"),
    (f"replay:demo,gpus={MAX_GPUS + 1}", "bad replay option"),
    ("replay:demo,loop=yes", "unknown replay option 'loop=yes'"),
    ("replay:", "replay needs a capture path"),
    ("replay:,loop", "replay needs a capture path"),
    ("cuda", "'cuda' is not nvml, auto or replay:PATH"),
    ("NVML", "'NVML' is not nvml"),
])
def test_invalid_backends(tmp_path: Path, backend: str, problem: str) -> None:
    path = write(tmp_path, f"# backend\nbackend: '{backend}'\n")
    message = error_of(path)
    assert message.startswith(f"{path}:2: backend: ")
    assert problem in message
    assert error_of(None, {"backend": backend}).startswith("--backend: backend: ")


# --- parse_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("500ms", 0.5), ("1s", 1.0), ("30s", 30.0), ("5m", 300.0), ("1m30s", 90.0), ("2h", 7200.0),
    ("1d", 86400.0), ("1.5s", 1.5), (" 2s ", 2.0), ("1h1m1s1ms", 3661.001), (2, 2.0), (0.25, 0.25),
])
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [
    "0s", "0", 0, 0.0, -1, "-1s", "fast", "", " ", "1", "1 s", "s", "1e3s", "1.s", ".5s", "1S", "٣s",
    True, False, None, [], {}, float("nan"), float("inf"), 10**400, "9" * 400 + "s",
])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_messages() -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration("0s")
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("-1s")
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(True)


# --- parse_listen --------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "listen", "text"), [
    (":9948", Listen("0.0.0.0", 9948), "0.0.0.0:9948"),
    ("127.0.0.1:1", Listen("127.0.0.1", 1), "127.0.0.1:1"),
    ("[::1]:9948", Listen("::1", 9948), "[::1]:9948"),
    ("[::]:80", Listen("::", 80), "[::]:80"),
    ("localhost:65535", Listen("localhost", 65535), "localhost:65535"),
])
def test_parse_listen(value: str, listen: Listen, text: str) -> None:
    assert parse_listen(value) == listen
    assert str(listen) == text
    assert parse_listen(listen) is listen


@pytest.mark.parametrize("value", [
    "host:99999", "host:65536", "host:0", "nocolon", "9948", ":", "host:", ":port", "::1:9948",
    "[::1]", "[nothex]:80", "a:b:80", "host:-1", "host:١٢", 9948, None,
])
def test_parse_listen_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_listen(value)


def test_listen_in_the_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "web:\n  listen: '[::1]:9000'\n")).web.listen == Listen("::1", 9000)
    path = write(tmp_path, "web:\n  listen: 127.0.0.1:99999\n")
    assert error_of(path).startswith(f"{path}:2: web.listen: '127.0.0.1:99999' is not HOST:PORT")


# --- fuzzing -------------------------------------------------------------------------------------

_yaml_ish = st.lists(
    st.sampled_from(["backend", "sampler", "web", "log", "fast_interval", "listen", ":", " ", "  ", "\n",
                     "- ", "[", "]", "{", "}", ",", "&a", "*a", "!!int", "!!float", "'", '"', "#", "---",
                     "1s", "500ms", "?", "<<", "|", ">", "\t", "nvml", "replay:demo", "\\", "%YAML", "@"])
    | st.text(max_size=5),
    max_size=40,
).map("".join)


def _load_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yml"
        path.write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_config(path), Config)
        except ConfigError as exc:
            assert str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | _yaml_ish)
def test_fuzz_load_config_text(text: str) -> None:
    _load_text(text)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_fuzz_load_config_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yml"
        path.write_bytes(data)
        with contextlib.suppress(ConfigError):
            load_config(path)


_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.sampled_from(
    ["1s", "500ms", "0s", ":9948", "nvml", "auto", "replay:demo", "replay:demo,loop", "debug", "json"])
_keys = st.sampled_from(["backend", "state_dir", "web", "listen", "config_file", "sampler", "fast_interval",
                         "slow_interval", "deadline", "metrics", "process_pids", "store", "retention", "log",
                         "level", "format"]) | st.text(max_size=6)
_tree = st.recursive(_leaf, lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(_keys, children, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _tree, max_size=6),
       st.dictionaries(st.sampled_from(["fast_interval", "slow_interval", "listen", "backend", "log_level"]),
                       _leaf, max_size=3))
def test_fuzz_structured_config(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Structurally plausible files (dumped as YAML) plus flags: a Config or a ConfigError, never a crash."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            assert isinstance(load_config(path, overrides), Config)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                assert line.startswith((f"{path}", "--")), line


@settings(max_examples=500, deadline=None)
@given(st.text() | st.from_regex(r"[0-9.]{0,6}(ms|s|m|h|d){0,2}[0-9]{0,3}(ms|s)?", fullmatch=True))
def test_fuzz_parse_duration(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 < seconds < float("inf")


@settings(max_examples=500, deadline=None)
@given(st.text() | st.from_regex(r"(\[[0-9a-f:.]{0,6}\]|[a-z0-9.:]{0,6})?:[0-9]{0,6}", fullmatch=True))
def test_fuzz_parse_listen(text: str) -> None:
    try:
        listen = parse_listen(text)
    except ValueError:
        return
    assert 0 < listen.port < 65536
    assert listen.host
    assert parse_listen(str(listen)) == listen


def test_validation_deeper_than_the_stack_is_an_error_not_a_crash() -> None:
    from gpumon.config import RouteConfig
    from gpumon.yamlfile import validate

    route: dict[str, Any] = {}
    for _ in range(5000):
        route = {"routes": [route]}
    with pytest.raises(ConfigError, match=r"^routes\.yml: nested too deeply$"):
        validate(RouteConfig, route, "routes.yml")
