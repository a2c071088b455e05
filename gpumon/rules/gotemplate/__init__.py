"""Alert label and annotation templates: Go's text/template language with Prometheus's functions.

Prometheus (2.42, the version `promtool` on Debian 12 runs) expands each alert label and annotation
by prepending `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL :=
.ExternalURL}}{{$value := .Value}}` and executing the text with Go's text/template, option
missingkey=zero, over the data {Labels, ExternalLabels, ExternalURL, Value}. This package is a port of
the parts of Go 1.19 that this needs, so that a rule file behaves in gpumon as it does in Prometheus,
byte for byte where we could check it against promtool:

* a lexer and a recursive-descent parser that mirror text/template/parse, with the same
  acceptance, the same scoping of variables, and Go's messages (`function "foo" not defined`,
  `unexpected {{end}}`, ...), raised as `TemplateError` when the rule loads, with line and column;
* an evaluator that mirrors text/template's exec.go: Go's value kinds (string, int, float64, uint8,
  bool, map[string]string, template.HTML, the data struct, nil), its truth rules, its argument
  checks, and its runtime error messages, which Prometheus renders as
  `<error expanding template: ...>` instead of the text;
* Go's fmt (`print`, `printf`, and how values print) and strconv float formatting;
* Prometheus's template functions; regular expressions run by RE2 (`gpumon.regex`), as Go's do.

Not supported, and rejected when the rule loads with a message that says so: `query` and the
functions that only make sense on its results (gpumon cannot run PromQL from a template), links into
the Prometheus UI, `toTime`, `args`/`call`, `{{define}}`/`{{template}}`/`{{block}}` and complex numbers.

Known approximations: case mapping uses Python's Unicode tables and regular expressions RE2's, not
Go 1.19's; and runtime error texts name the template "__alert_" plus the `alert_name` given to
`compile_template`, as Prometheus names it after the alert.
"""

from gpumon.rules.gotemplate.exec import Template, compile_template
from gpumon.rules.gotemplate.functions import FUNCTIONS
from gpumon.rules.gotemplate.values import TemplateError

__all__ = ["FUNCTIONS", "Template", "TemplateError", "compile_template"]
