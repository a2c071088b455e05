"""Alert templates against Prometheus 2.42 (promtool): Go's text/template with Prometheus's functions.

Every expected rendering below was recorded from promtool, and `test_promtool_agrees` checks again,
in one promtool run, that promtool renders each case exactly as gpumon does. The unit tests then pin
the load-time errors (with their positions), the runtime errors (Prometheus's
`<error expanding template: ...>` text, column included), and fuzz the parser and executor.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumon.rules.gotemplate import FUNCTIONS, TemplateError, compile_template

NAN, INF = math.nan, math.inf
EXTERNAL_LABELS = {"region": "eu-west", "cluster": "h100-a"}
EXTERNAL_URL = "http://prometheus.example:9090"
GPU = {"instance": "gpu-node-1.example.com:9400", "gpu": "0", "job": "dcgm", "modelName": "NVIDIA H100 80GB HBM3"}
L = {"instance": "10.0.0.7:9400", "gpu": "3"}

# (template, $value, $labels, what Prometheus renders)
CASES: list[tuple[str, float, dict[str, str], str]] = [
    # plain text
    ('GPU is hot', 1, GPU,
     'GPU is hot'),
    # $value prints as Go's %v of a float64
    ('{{ $value }}', 0, GPU,
     '0'),
    ('{{ $value }}', 0.95, GPU,
     '0.95'),
    ('{{ $value }}', 1234567, GPU,
     '1.234567e+06'),
    ('{{ $value }}', 123456, GPU,
     '123456'),
    ('{{ $value }}', 1e-07, GPU,
     '1e-07'),
    ('{{ $value }}', 0.0001, GPU,
     '0.0001'),
    ('{{ $value }}', NAN, GPU,
     'NaN'),
    ('{{ $value }}', INF, GPU,
     '+Inf'),
    ('{{ $value }}', -INF, GPU,
     '-Inf'),
    ('{{ $value }}', -42.5, GPU,
     '-42.5'),
    ('{{ $value }}', 1e+21, GPU,
     '1e+21'),
    ('{{ .Value }} {{ $.Value }}', 86.25, GPU,
     '86.25 86.25'),
    # labels, external labels, the data itself
    ('GPU {{ $labels.gpu }} on {{ $labels.instance }} ({{ .Labels.modelName }})', 1, GPU,
     'GPU 0 on gpu-node-1.example.com:9400 (NVIDIA H100 80GB HBM3)'),
    ('[{{ $labels.missing }}] [{{ index $labels "gpu" }}] [{{ index .Labels "nope" }}]', 1, GPU,
     '[] [0] []'),
    ('{{ $labels }}', 1, L,
     'map[gpu:3 instance:10.0.0.7:9400]'),
    ('{{ $externalLabels.region }}/{{ .ExternalLabels.cluster }} {{ $externalLabels }} {{ $externalURL }}',
     1, L,
     'eu-west/h100-a map[cluster:h100-a region:eu-west] http://prometheus.example:9090'),
    ('{{ . }}', 2.5, L,
     '{map[gpu:3 instance:10.0.0.7:9400] map[cluster:h100-a region:eu-west] http://prometheus.example:9090 2.5}'),
    # trim markers and comments
    ('a  {{- $labels.gpu -}}  b {{/* a comment */}}c {{- /* trimmed */ -}} d', 1, L,
     'a3b cd'),
    ('line1\n  {{- if true }}\n  yes\n  {{- end }}\nline3', 1, L,
     'line1\n  yes\nline3'),
    # if / else if / else, with, range (in key order), break, continue
    ('{{ if gt $value 90.0 }}critical{{ else if gt $value 80.0 }}warning{{ else }}ok{{ end }}', 85, GPU,
     'warning'),
    ('{{ if gt $value 90.0 }}critical{{ else if gt $value 80.0 }}warning{{ else }}ok{{ end }}', NAN, GPU,
     'critical'),
    ('{{ with $labels.gpu }}gpu={{ . }}{{ else }}no gpu{{ end }} {{ with $labels.nope }}x{{ else }}none{{ end '
     '}}', 1, GPU,
     'gpu=0 none'),
    ('{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}', 1, GPU,
     'gpu=0;instance=gpu-node-1.example.com:9400;job=dcgm;modelName=NVIDIA H100 80GB HBM3;'),
    ('{{ range $labels }}[{{ . }}]{{ end }}{{ range $v := .Labels }}<{{ $v }}>{{ end }}', 1, L,
     '[3][10.0.0.7:9400]<3><10.0.0.7:9400>'),
    ('{{ range $k, $v := $labels }}{{ if eq $k "job" }}{{ break }}{{ end }}{{ if eq $k "gpu" }}{{ continue }}{'
     '{ end }}{{ $k }} {{ end }}', 1, GPU,
     'instance '),
    ('{{ range $externalLabels }}x{{ else }}empty{{ end }}|{{ range $x := $labels }}{{ else }}e{{ end }}',
     1, {},
     'xx|e'),
    # variables: := declares, = assigns (also from inside a block)
    ('{{ $t := 80.0 }}{{ if gt $value $t }}above {{ $t }}{{ end }}', 85, GPU,
     'above 80'),
    ('{{ $n := 0 }}{{ range $labels }}{{ $n = len . }}{{ end }}{{ $n }} {{ $value := 7 }}{{ $value }}', 1, L,
     '13 7'),
    # literals: Go string escapes, raw strings, hex, runes, underscores, exponents
    ('{{ "tab\\there\\u00e9\\x41\\101" }}|{{ `raw\\n` }}|{{ 0x1F }}|{{ \'a\' }}|{{ 1_000 }}|{{ 1e3 }}|{{ 1.0 }'
     '}|{{ -3 }}|{{ 0o17 }}|{{ true }}', 1, L,
     'tab\thereéAA|raw\\n|31|97|1000|1000|1|-3|15|true'),
    # pipelines and parentheses
    ('{{ $value | humanize }}|{{ $labels.job | toUpper | printf "%s!" }}', 1, L,
     '1|!'),
    ('{{ $labels.gpu | printf "%s-%s" "gpu" }}|{{ (index $labels "instance") | stripPort }}|{{ len (print $val'
     'ue) }}', 73.125, L,
     'gpu-3|10.0.0.7|6'),
    # comparison and logic (NaN is "greater" than anything: gt is not le)
    ('{{ eq $labels.gpu "3" }} {{ ne $labels.gpu "3" }} {{ eq 1 2 3 1 }} {{ lt 1.5 2.5 }} {{ le 2 2 }} {{ gt "'
     'b" "a" }} {{ ge 1 2 }}', 1, L,
     'true false true true true true false'),
    ('{{ gt $value 1.0 }} {{ ge $value 1.0 }} {{ lt $value 1.0 }} {{ le $value 1.0 }} {{ eq $value $value }}',
     NAN, L,
     'true true false false false'),
    ('{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 "" "x" }}|{{ or 0 "" }}|{{ not 0 }}|{{ not $labels }}|{{ and $labe'
     'ls "y" }}', 1, L,
     '0|2|x||true|false|y'),
    ('{{ len $labels }} {{ len "héllo" }} {{ len $externalLabels }} {{ index "abc" 1 }} {{ slice "hello" 1 3 }}',
     1, L,
     '2 6 2 98 el'),
    # printf and print: Go's verbs, flags, and complaints that are text, not errors
    ('{{ printf "%s|%d|%f|%.2f|%g|%e|%v|%q|%x|%X|%%" "s" 42 3.14159 3.14159 0.000012345 123456.789 $value "q" '
     '255 "hé" }}', 0.5, L,
     's|42|3.141590|3.14|1.2345e-05|1.234568e+05|0.5|"q"|ff|68C3A9|%'),
    ('{{ printf "%5.1f|%-8s|%08.3f|%+d|% d|%6.2f%%|%.4g|%.3s|%5t|%c|%U|%#x|%o|%b" 3.14159 "ab" -3.14159 5 5 95'
     '.123 1234567.0 "abcdef" true 65 233 255 8 5 }}', 1, L,
     '  3.1|ab      |-003.142|+5| 5| 95.12%|1.235e+06|abc| true|A|U+00E9|0xff|10|101'),
    ('{{ printf "%d" "x" }}|{{ printf "%d %d" 1 }}|{{ printf "%d" 1 2 }}|{{ printf "%s" 1.5 }}|{{ printf "%" }'
     '}|{{ printf "%z" true }}', 1, L,
     '%!d(string=x)|1 %!d(MISSING)|1%!(EXTRA int=2)|%!s(float64=1.5)|%!(NOVERB)|%!z(bool=true)'),
    ('{{ printf "%v %T %T %T" $labels $value 1 . }}', 1, L,
     'map[gpu:3 instance:10.0.0.7:9400] float64 int struct { Labels map[string]string; ExternalLabels map[stri'
     'ng]string; ExternalURL string; Value float64 }'),
    ('{{ printf "%.4g|%g|%v" $value $value $value }}', 1e-07, L,
     '1e-07|1e-07|1e-07'),
    ('{{ print 1 2 "a" "b" 3 nil }}|{{ println "x" 1 }}|{{ print }}', 1, L,
     '1 2ab3 <nil>|x 1\n|'),
    # humanize and friends (Prometheus's template.go)
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', 1234567, L,
     '1.235M|1.177Mi|14d 6h 56m 7s|1.235e+08%|1970-01-15 06:56:07 +0000 UTC'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', 0.00123, L,
     '1.23m|0.00123|1.23ms|0.123%|1970-01-01 00:00:00.001 +0000 UTC'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', 0, L,
     '0|0|0s|0%|1970-01-01 00:00:00 +0000 UTC'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', NAN, L,
     'NaN|NaN|NaN|NaN%|NaN'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', -INF, L,
     '-Inf|-Inf|-Inf|-Inf%|-Inf'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}|{{ humanizeTimestamp $value }}', -3661.5, L,
     '-3.662k|-3.576ki|-1h 1m 1s|-3.662e+05%|1969-12-31 22:58:58.5 +0000 UTC'),
    ('{{ humanize $value }}|{{ humanize1024 $value }}|{{ humanizeDuration $value }}|{{ humanizePercentage $val'
     'ue }}', 1e-07, L,
     '100n|1e-07|100ns|1e-05%'),
    ('{{ humanizeDuration 3661 }}|{{ humanizeDuration 0.5 }}|{{ humanizeDuration 34563723.7 }}|{{ humanizeDura'
     'tion 59.99 }}|{{ humanizeDuration 1e30 }}|{{ humanizeDuration -0.000001234 }}', 1, L,
     '1h 1m 1s|500ms|400d 1h 2m 3s|59.99s|-106751991167300d -15h -30m -8s|-1.234us'),
    ('{{ humanize 1234567 }}|{{ humanize 0.00123 }}|{{ humanizePercentage 0.951 }}|{{ humanize1024 2048 }}|{{ '
     'humanize "2.5e9" }}|{{ humanize 1e30 }}|{{ humanize1024 -1 }}', 1, L,
     '1.235M|1.23m|95.1%|2ki|2.5G|1e+06Y|-1'),
    ('{{ humanizeTimestamp 1700000000.123456 }}|{{ humanizeTimestamp -1e9 }}|{{ humanizeTimestamp "0.5" }}',
     1, L,
     '2023-11-14 22:13:20.123 +0000 UTC|1938-04-24 22:13:20 +0000 UTC|1970-01-01 00:00:00.5 +0000 UTC'),
    # string functions
    ('{{ toUpper "gpu é ß" }}|{{ toLower "H100 ÀÉ" }}|{{ title "hello_world o\'neil foo.bar wORLD" }}|{{ title'
     ' $labels.job }}', 1, GPU,
     "GPU É ß|h100 àé|Hello_world O'Neil Foo.Bar WORLD|Dcgm"),
    ('{{ stripPort $labels.instance }}|{{ stripPort "[::1]:80" }}|{{ stripPort "host" }}|{{ stripDomain $label'
     's.instance }}|{{ stripDomain "10.0.0.1:80" }}', 1, GPU,
     'gpu-node-1.example.com|::1|host|gpu-node-1:9400|10.0.0.1:80'),
    ('{{ safeHtml "<b>hot</b>" }}|{{ html "<a href=\'x\'>&" }}|{{ js "it\'s <hot>" }}|{{ urlquery "a b&c=é" }}',
     1, L,
     "<b>hot</b>|&lt;a href=&#39;x&#39;&gt;&amp;|it\\'s \\u003Chot\\u003E|a+b%26c%3D%C3%A9"),
    ('{{ parseDuration "1h30m" }}|{{ parseDuration "100ms" }}|{{ parseDuration "1y2w3d" }}|{{ parseDuration "0'
     '" }}', 1, L,
     '5400|0.1|3.30048e+07|0'),
    # regular expressions in Go's syntax: $ is end of text, \d \w \b are ASCII, (?U), \Q..\E, ${name}
    ('{{ if match "^gpu-node-[0-9]+" $labels.instance }}node{{ end }}|{{ match "(?i)DCGM" $labels.job }}|{{ ma'
     'tch "\\\\d+$" $labels.gpu }}|{{ match "a{,2}" "a{,2}" }}', 1, GPU,
     'node|true|true|true'),
    ('{{ reReplaceAll "(.*):.*" "$1" $labels.instance }}|{{ reReplaceAll "^(?P<host>[^.]+)\\\\..*$" "${host}" '
     '$labels.instance }}|{{ reReplaceAll "x*" "-" "abxd" }}|{{ reReplaceAll "(\\\\w+)" "$1x" "ab cd" }}|{{ re'
     'ReplaceAll "[[:digit:]]" "#" "h100" }}', 1, GPU,
     'gpu-node-1.example.com|gpu-node-1|-a-b-d-| |h###'),
    ('{{ reReplaceAll "(?U)\\\\w+" "<$0>" "abc" }}|{{ reReplaceAll "\\\\bfoo\\\\b" "X" "foo foo_ éfoo" }}|{{ r'
     'eReplaceAll "a$" "X" "a\\na" }}|{{ reReplaceAll "(?m)a$" "X" "a\\na" }}|{{ reReplaceAll "\\\\Qa.b\\\\E" '
     '"$$" "a.b axb" }}', 1, L,
     '<a><b><c>|X foo_ éX|a\nX|X\nX|$ axb'),
    ('{{ reReplaceAll "\\\\pL+" "L" "GPU é 100" }}|{{ reReplaceAll "(?i)[^a-z]" "_" "aB1é" }}|{{ reReplaceAll '
     '"[\\\\s\\\\d]" "" "a 1\\tb" }}', 1, L,
     'L L 100|aB__|ab'),
    # run by RE2, as Go runs them: script classes, and a pattern that backtracking engines take hours on
    ('{{ reReplaceAll "\\\\p{Greek}+" "G" "αβγ gpu" }}|{{ match "(.*-?)*Z" "a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a-a'
     '-a-a-a-a-a-a-a-a-a-a-a-" }}|{{ reReplaceAll "(?i)(?P<x>gpu)" "<${x}>" "GPU gpu" }}', 1, L,
     'G gpu|false|<GPU> <gpu>'),
    # a wrong printf is text, not an error
    ('{{ printf "%d items" }}|{{ printf "%.2f" "not a number" }}', 1, L,
     '%!d(MISSING) items|%!f(string=no)'),
]

# (alert name, template, what Prometheus renders): runtime errors name the alert's template and the
# position in it after Prometheus's 112-character prefix of variable definitions.
ERROR_LABELS = {"gpu": "3", "job": "dcgm"}
ERROR_CASES: list[tuple[str, str, str]] = [
    ('HumanizeNotANumber', '{{ humanize "abc" }}',
     '<error expanding template: error executing template __alert_HumanizeNotANumber: template: __alert_Humani'
     'zeNotANumber:1:115: executing "__alert_HumanizeNotANumber" at <humanize "abc">: error calling humanize: '
     'strconv.ParseFloat: parsing "abc": invalid syntax>'),
    ('CompareFloatToInt', 'GPU {{ $labels.gpu }}: {{ if eq $value 1 }}one{{ end }}',
     '<error expanding template: error executing template __alert_CompareFloatToInt: template: __alert_Compare'
     'FloatToInt:1:141: executing "__alert_CompareFloatToInt" at <eq $value 1>: error calling eq: incompatible'
     ' types for comparison>'),
    ('IndexOutOfRange', '{{ index "abc" 3 }}',
     '<error expanding template: error executing template __alert_IndexOutOfRange: template: __alert_IndexOutO'
     'fRange:1:115: executing "__alert_IndexOutOfRange" at <index "abc" 3>: error calling index: reflect: stri'
     'ng index out of range>'),
    ('RangeOverNumber', '{{ range $value }}x{{ end }}',
     '<error expanding template: error executing template __alert_RangeOverNumber: template: __alert_RangeOver'
     'Number:1:121: executing "__alert_RangeOverNumber" at <$value>: range can\'t iterate over 1>'),
    ('BadRegexpMatch', '{{ match "(" $labels.job }}',
     '<error expanding template: error executing template __alert_BadRegexpMatch: template: __alert_BadRegexpM'
     'atch:1:115: executing "__alert_BadRegexpMatch" at <match "(" $labels.job>: error calling match: error pa'
     'rsing regexp: missing closing ): `(`>'),
    ('BadRegexpReplace', '{{ reReplaceAll "a**" "x" $labels.job }}',
     '<error expanding template: error executing template __alert_BadRegexpReplace: template: __alert_BadRegex'
     'pReplace:1:115: executing "__alert_BadRegexpReplace" at <reReplaceAll "a**" "x" $labels.job>: error call'
     'ing reReplaceAll: regexp: Compile(`a**`): error parsing regexp: invalid nested repetition operator: `**`'
     '>'),
    ('FieldOfString', 'line 1\n  {{ $labels.gpu.x }}',
     '<error expanding template: error executing template __alert_FieldOfString: template: __alert_FieldOfStri'
     'ng:2:12: executing "__alert_FieldOfString" at <$labels.gpu.x>: can\'t evaluate field x in type string>'),
    ('WrongArgType', '{{ toUpper $value }}',
     '<error expanding template: error executing template __alert_WrongArgType: template: __alert_WrongArgType'
     ':1:123: executing "__alert_WrongArgType" at <$value>: wrong type for value; expected string; got float64'
     '>'),
    ('WrongArgCount', '{{ humanize }}',
     '<error expanding template: error executing template __alert_WrongArgCount: template: __alert_WrongArgCou'
     'nt:1:115: executing "__alert_WrongArgCount" at <humanize>: wrong number of args for humanize: want 1 got'
     ' 0>'),
    ('NilCommand', 'é {{ nil }}',
     '<error expanding template: error executing template __alert_NilCommand: template: __alert_NilCommand:1:1'
     '18: executing "__alert_NilCommand" at <nil>: nil is not a command>'),
    ('TimestampOverflow', '{{ humanizeTimestamp 1e30 }}',
     '<error expanding template: error executing template __alert_TimestampOverflow: template: __alert_Timesta'
     'mpOverflow:1:115: executing "__alert_TimestampOverflow" at <humanizeTimestamp 1e30>: error calling human'
     'izeTimestamp: 1e+30 cannot be represented as a nanoseconds timestamp since it overflows int64>'),
    ('BadDuration', '{{ parseDuration "1.5h" }}',
     '<error expanding template: error executing template __alert_BadDuration: template: __alert_BadDuration:1'
     ':115: executing "__alert_BadDuration" at <parseDuration "1.5h">: error calling parseDuration: not a vali'
     'd duration string: "1.5h">'),
]


def render(template: str, value: float, labels: dict[str, str], alert: str = "") -> str:
    return compile_template(template, alert_name=alert).render(labels, value, EXTERNAL_LABELS,
                                                               external_url=EXTERNAL_URL)


@pytest.mark.parametrize(("template", "value", "labels", "expected"), CASES)
def test_renders_as_prometheus_does(template: str, value: float, labels: dict[str, str], expected: str) -> None:
    assert render(template, value, labels) == expected


@pytest.mark.parametrize(("alert", "template", "expected"), ERROR_CASES)
def test_runtime_errors_render_as_prometheus_does(alert: str, template: str, expected: str) -> None:
    assert render(template, 1, ERROR_LABELS, alert) == expected


def test_cases_cover_every_function_and_construct() -> None:
    text = " ".join(t for t, *_ in CASES)
    for fn in FUNCTIONS:
        assert re.search(rf"[{{(|] *{fn}\b", text), fn
    for construct in ["{{-", "-}}", "{{/*", "else if", "{{ else }}", "{{ with", "{{ range $k, $v :=", "{{ break }}",
                      "{{ continue }}", ":=", " = ", " | ", "(index", "$externalLabels", "$externalURL", ".Labels",
                      "$.Value", "`raw", "'a'", "0x1F", "1_000", "\\u00e9"]:
        assert construct in text, construct
    values = [v for _, v, *_ in CASES]
    for v in (0, 0.95, 1234567, 1e-7):
        assert v in values
    assert any(math.isnan(v) for v in values) and INF in values and -INF in values and min(values) < 0
    assert len(CASES) >= 40


def _promql_value(v: float) -> str:
    return "NaN" if math.isnan(v) else "Inf" if v == INF else "-Inf" if v == -INF else repr(float(v))


def _series(i: int, labels: dict[str, str]) -> str:
    matchers = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                        for k, v in labels.items())
    return f"case_{i}{{{matchers}}}"


@pytest.mark.integration
def test_promtool_agrees(tmp_path: Path) -> None:
    """One rule file with an alert per case, one alert_rule_test per alert expecting gpumon's
    rendering: promtool exits 0 only if it renders every annotation identically."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run the tests with `make test`, which installs it")
    cases = [(f"Case{i}", t, v, labels) for i, (t, v, labels, _) in enumerate(CASES)]
    cases += [(alert, t, 1.0, ERROR_LABELS) for alert, t, _ in ERROR_CASES]
    rules, series, tests = [], [], []
    for i, (alert, template, value, labels) in enumerate(cases):
        # `* 1` drops the metric name, so $labels are exactly the case's labels.
        rules.append({"alert": alert, "expr": f"case_{i} * 1", "annotations": {"text": template}})
        series.append({"series": _series(i, labels), "values": _promql_value(value)})
        tests.append({"eval_time": "0m", "alertname": alert, "exp_alerts": [
            {"exp_labels": labels, "exp_annotations": {"text": render(template, value, labels, alert)}}]})
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "templates", "rules": rules}]}))
    group = {"interval": "1m", "external_labels": EXTERNAL_LABELS, "external_url": EXTERNAL_URL,
             "input_series": series, "alert_rule_test": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [group]}))
    run = subprocess.run([promtool, "test", "rules", str(tmp_path / "test.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# -- load-time errors


@pytest.mark.parametrize(("text", "message", "line", "column"), [
    ("{{ foo }}", 'function "foo" not defined', 1, 4),
    ("{{ $value | humanise }}", 'function "humanise" not defined', 1, 13),
    ("{{ $value", "unclosed action", 1, 10),
    ("{{ end }}", "unexpected {{end}}", 1, 4),
    ("ok\n{{ else }}", "unexpected {{else}}", 2, 4),
    ("{{ if true }}x", "unexpected EOF", 1, 14),
    ("{{ if true }}x{{ else }}y{{ else }}z{{ end }}", "expected end; found {{else}}", 1, 29),
    ("{{ if }}{{ end }}", "missing value for if", 1, 7),
    ("{{ $x }}", 'undefined variable "$x"', 1, 4),
    ("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}", 'undefined variable "$y"', 1, 39),
    ('{{ "abc }}', "unterminated quoted string", 1, 4),
    ('{{ "\\q" }}', "invalid syntax", 1, 4),
    ("{{ 1 | 2 }}", "non executable command in pipeline stage 2", 1, 8),
    ("{{ (1 }}", "unclosed left paren", 1, 7),
    ("{{ 08 }}", 'integer overflow: "08"', 1, 4),
    ("{{ break }}", "{{break}} outside {{range}}", 1, 4),
    ("{{/* comment", "unclosed comment", 1, 3),
    ("{{ range $a, $b, $c := $labels }}{{ end }}", "too many declarations in range", 1, 16),
    ("{{ $labels.a-b }}", "bad character U+002D '-'", 1, 13),
    ("{{\n$value\n", "unclosed action started at line 1", 3, 1),
])
def test_syntax_errors_fail_at_load_with_their_position(text: str, message: str, line: int, column: int) -> None:
    with pytest.raises(TemplateError) as err:
        compile_template(text)
    assert (err.value.message, err.value.line, err.value.column) == (message, line, column)
    assert str(err.value) == f"line {line}, column {column}: {message}"


@pytest.mark.parametrize(("text", "says"), [
    ('{{ query "up" }}', "templates cannot run queries"),
    ('{{ with query "up" }}{{ . | first | value }}{{ end }}', "templates cannot run queries"),
    ("{{ first . }}", "it works on the results of query"),
    ('{{ graphLink "up" }}', "Prometheus web UI"),
    ("{{ toTime $value }}", "use humanizeTimestamp"),
    ('{{ template "x" }}', "{{template}} is not supported by gpumon"),
    ('{{ define "x" }}y{{ end }}', "{{define}} is not supported by gpumon"),
    ("{{ 1i }}", "complex number constants are not supported"),
])
def test_what_gpumon_cannot_do_fails_at_load_and_says_so(text: str, says: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(says)):
        compile_template(text)


def test_an_invalid_regexp_is_a_runtime_error_as_in_prometheus() -> None:
    tmpl = compile_template('{{ match "[a" $labels.job }}')  # Prometheus loads this too
    assert tmpl.render({"job": "x"}, 1).endswith("error calling match: error parsing regexp: missing closing ]: `[a`>")


# -- runtime behaviour


def test_printf_with_wrong_arguments_is_not_an_error() -> None:
    assert render('{{ printf "%d %s" "x" }}', 1, {}) == "%!d(string=x) %!s(MISSING)"


def test_render_leaves_its_arguments_alone_and_can_be_repeated() -> None:
    tmpl = compile_template("{{ $labels.gpu }}={{ humanize $value }}")
    labels = {"gpu": "1"}
    assert [tmpl.render(labels, v) for v in (1e3, 2e6)] == ["1=1k", "1=2M"]
    assert labels == {"gpu": "1"}


def test_default_template_name() -> None:
    assert compile_template("{{ humanize $labels.x }}").render({"x": "?"}, 1).startswith(
        "<error expanding template: error executing template __alert_: template: __alert_:1:115: ")


# -- fuzzing: loading raises only TemplateError, rendering never raises

_PIECES = ["{{", "}}", "{{- ", " -}}", "{{/*", "*/}}", " ", "\n", "$value", "$labels", ".gpu", ".Labels", "$", ".",
           "$x", ":=", "=", "|", "(", ")", ",", '"', '"a"', "`", "'", "'b'", "1", "-1.5", "0x1F", "1e3", "nil", "true",
           "if", "else", "end", "range", "with", "break", "continue", "printf", '"%d %5.2f %s %q %x %v %T %"',
           "humanize", "humanizeDuration", "humanizeTimestamp", "humanize1024", "humanizePercentage", "index", "slice",
           "len", "eq", "lt", "gt", "and", "or", "not", "print", "match", "reReplaceAll", '"(a+)$"', '"$1"',
           "toUpper", "title", "stripPort", "stripDomain", "parseDuration", "query", "\\", "é", "\x00", "#"]
_TEXT = st.lists(st.sampled_from(_PIECES) | st.text(max_size=3), max_size=24).map("".join)
_LABELS = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT, _LABELS, st.floats(allow_nan=True, allow_infinity=True), st.dictionaries(st.text(), st.text()))
def test_loading_raises_only_template_errors_and_rendering_never_raises(
        text: str, labels: dict[str, str], value: float, external: dict[str, str]) -> None:
    try:
        tmpl = compile_template(text)
    except TemplateError:
        return
    assert isinstance(tmpl.render(labels, value, external), str)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([t for t, *_ in CASES] + [t for _, t, _ in ERROR_CASES]), _LABELS,
       st.floats(allow_nan=True, allow_infinity=True))
def test_valid_templates_render_any_labels_and_value(template: str, labels: dict[str, str], value: float) -> None:
    assert isinstance(compile_template(template).render(labels, value), str)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_humanize_shortcut_formats_as_the_go_fmt_port(value: float) -> None:
    """`_fmt_g4` takes C's %.4g for finite floats instead of the Go fmt port; they must agree."""
    from gpumon.rules.gotemplate.fmt import _fmt_g4, _sprintf

    assert _fmt_g4(value) == _sprintf("%.4g", [value])
