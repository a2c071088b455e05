"""Regular expressions written by users (rule selectors, label_replace, templates, routes, inhibition,
silences), run by RE2.

RE2 matches in time linear in the text whatever the pattern, so no silence, route or rule can hang
the daemon with catastrophic backtracking (`(.*-?)*Z` takes microseconds). It is also the syntax
Prometheus and Alertmanager define: Go's regexp is RE2's. Errors read as Go's do
("error parsing regexp: missing closing ]: `[a`"), which is what promtool and Alertmanager print.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

# RE2's error codes as Go's regexp/syntax words them (the fragment after the colon is the same).
_GO_CODES = {
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "unexpected )": "unexpected )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "missing argument to repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid named capture group": "invalid named capture",
    "duplicate capture group name": "duplicate capture group name",
    "invalid escape sequence": "invalid escape sequence",
    "invalid character class": "invalid character class",
    "invalid character class range": "invalid character class range",
    "invalid UTF-8": "invalid UTF-8",
    "pattern too large - compile failed": "expression too large",
}
MAX_PATTERN_BYTES = 64 * 1024  # far beyond any real rule; RE2's own memory budget bounds the rest


class RegexError(ValueError):
    """A pattern Go's regexp (and RE2) rejects; the message is Go's."""


# What makes a pattern more than text, but for `|`: without them a pattern is alternatives of values.
_METACHARACTERS = frozenset("\\.+*?()[]{}^$")


class Regex:
    """A compiled pattern. Matching never backtracks; text that is not valid Unicode never matches."""

    __slots__ = ("_literals", "_re", "group_names", "pattern")

    def __init__(self, pattern: str, compiled: Any, literals: frozenset[str] | None = None) -> None:
        self.pattern = pattern
        self._re = compiled
        self._literals = literals
        names: list[str] = [""] * ((compiled.groups if compiled is not None else 0) + 1)
        for name, index in (compiled.groupindex.items() if compiled is not None else ()):
            names[index] = name
        self.group_names = tuple(names)  # index 0 (the whole match) has no name

    def search(self, text: str, pos: int = 0) -> Any:
        """The leftmost match at or after `pos`, as Go finds it; a `^` matches only at 0."""
        if self._re is None:
            self._re = _compile(self.pattern)
        try:
            return self._re.search(text, pos)
        except UnicodeEncodeError:  # a lone surrogate: no RE2 text can match it
            return None

    @property
    def literals(self) -> frozenset[str] | None:
        """The texts an anchored alternation of literals (`a|b|c`) matches, else None."""
        return self._literals

    def matches(self, text: str) -> bool:
        if self._literals is not None:
            return text in self._literals
        return self.search(text) is not None


@functools.cache
def _re2() -> Any:
    """RE2, imported on the first pattern that needs it: the module and its library cost 2.5 MiB of
    memory, and the bundled rules need none (their patterns are alternatives of literal values)."""
    import re2

    return re2


@functools.cache
def _options() -> Any:
    options = _re2().Options()
    options.log_errors = False  # RE2 would print every rejected pattern to stderr
    return options


def _compile(pattern: str) -> Any:
    return _re2().compile(pattern, _options())


@functools.lru_cache(maxsize=4096)
def compile_go(pattern: str) -> Regex:
    """Go's regexp.Compile(pattern): unanchored. Raises RegexError with Go's message."""
    if len(pattern.encode("utf-8", "surrogatepass")) > MAX_PATTERN_BYTES:
        raise RegexError(f"error parsing regexp: expression too large: `{pattern[:40]}...`")
    _reject_go_rejects(pattern)
    try:
        return Regex(pattern, _compile(pattern))
    except UnicodeEncodeError:
        raise RegexError(f"error parsing regexp: invalid UTF-8: `{pattern!r}`") from None
    except _re2().error as exc:
        message = exc.args[0].decode("utf-8", "replace") if isinstance(exc.args[0], bytes) else str(exc.args[0])
        code, _, fragment = message.partition(": ")
        raise RegexError(f"error parsing regexp: {_GO_CODES.get(code, code)}: `{fragment}`") from None


def anchored(pattern: str) -> Regex:
    """A label matcher's or label_replace's pattern, anchored as Prometheus 2.42 and Alertmanager
    anchor it: `^(?:p)$` (so `.` does not match a newline; Prometheus 2.47 and later add `(?s:`).

    Alternatives of plain values (`48|62|79`, `hw_slowdown|sw_thermal_slowdown`) match as a set, as
    Prometheus's FastRegexMatcher does: `^(?:a|b)$` matches exactly the texts a and b. RE2 compiles
    the pattern only if something asks for its groups (label_replace)."""
    if pattern.isprintable() and len(pattern) <= MAX_PATTERN_BYTES // 4:
        literals = _literal_alternatives(pattern)
        if literals is not None:
            return Regex(f"^(?:{pattern})$", None, literals)
    return compile_go(f"^(?:{pattern})$")


def _literal_alternatives(pattern: str) -> frozenset[str] | None:
    """The texts `a|b\\.c` matches exactly ({"a", "b.c"}): alternatives of plain characters, where a
    metacharacter counts only escaped (`\\.`); None for anything else."""
    alternatives, current = [], []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1] not in _METACHARACTERS | {"|"}:
                return None  # \d, \w, ...: a class, not a character
            current.append(pattern[i + 1])
            i += 2
            continue
        if c == "|":
            alternatives.append("".join(current))
            current = []
        elif c in _METACHARACTERS:
            return None
        else:
            current.append(c)
        i += 1
    alternatives.append("".join(current))
    return frozenset(alternatives)


def _reject_go_rejects(pattern: str) -> None:
    """What RE2 accepts and Go does not: `\\C` (any byte, which could split a UTF-8 character)."""
    i = 0
    while (i := pattern.find("\\", i)) >= 0:
        if pattern[i + 1:i + 2] == "C":
            raise RegexError("error parsing regexp: invalid escape sequence: `\\C`")
        i += 2


def expand(template: str, match: Any, regex: Regex) -> str:
    """Go's Regexp.Expand: `$1`, `${1}`, `$name`, `${name}` in a replacement, `$$` for a dollar. A name
    runs as long as letters, digits and `_` continue (`$1x` is `${1x}`); a missing group is empty."""
    out = []
    while True:
        before, dollar, template = template.partition("$")
        out.append(before)
        if not dollar:
            return "".join(out)
        if template.startswith("$"):
            out.append("$")
            template = template[1:]
            continue
        brace = template.startswith("{")
        s = template[1:] if brace else template
        n = 0
        while n < len(s) and (s[n] == "_" or s[n].isalpha() or unicodedata.category(s[n]) == "Nd"):
            n += 1
        if n == 0 or (brace and s[n:n + 1] != "}"):
            out.append("$")  # malformed: the $ is literal
            continue
        name, template = s[:n], s[n + brace:]
        num = int(name) if name.isascii() and name.isdigit() and len(name) <= 8 else -1
        if name[0] == "0" and len(name) > 1:
            num = -1
        if num < 0:
            num = regex.group_names.index(name) if name in regex.group_names else -1
        if 0 <= num < len(regex.group_names) and match.start(num) >= 0:
            out.append(match.group(num))


def replace_all(regex: Regex, src: str, repl: str) -> str:
    """Go's Regexp.ReplaceAllString: `$` references expanded; an empty match right after a match is
    not replaced (unlike Python's re.sub)."""
    out, last_end, pos = [], 0, 0
    while pos <= len(src):
        m = regex.search(src, pos)
        if m is None:
            break
        start, end = m.span()
        out.append(src[last_end:start])
        if end > last_end or start == 0:
            out.append(expand(repl, m, regex))
        last_end = end
        pos = pos + 1 if pos + 1 > end or pos == len(src) else end
    out.append(src[last_end:])
    return "".join(out)
