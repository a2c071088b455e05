"""gpumon/regex.py beyond the matcher grammar (tests/notify/test_matchers.py): alternatives of plain
values match as a set, exactly as RE2 would, and cost no RE2 at all."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from gpumon.regex import anchored, compile_go, replace_all

PLAIN = st.text(alphabet=st.characters(blacklist_characters="\\.+*?()[]{}^$|", blacklist_categories=("Cs", "Cc")),
                max_size=6)


@given(values=st.lists(PLAIN, min_size=1, max_size=5), texts=st.lists(PLAIN, max_size=5))
def test_alternatives_of_values_match_as_re2_matches_them(values: list[str], texts: list[str]) -> None:
    pattern = "|".join(values)
    fast, re2 = anchored(pattern), compile_go(f"^(?:{pattern})$")
    for text in [*values, *texts, pattern, values[0] + "x", "x" + values[0], ""]:
        assert fast.matches(text) == re2.matches(text), (pattern, text)


ESCAPED = st.lists(st.one_of(PLAIN, st.sampled_from(["\\.", "\\*", "\\|", "\\(", "\\$"])), min_size=1, max_size=4
                   ).map("".join)


@given(values=st.lists(ESCAPED, min_size=1, max_size=4), texts=st.lists(PLAIN, max_size=4))
def test_values_with_escaped_metacharacters_match_as_re2_matches_them(values: list[str], texts: list[str]) -> None:
    pattern = "|".join(values)
    fast, re2 = anchored(pattern), compile_go(f"^(?:{pattern})$")
    unescaped = [v.replace("\\", "") for v in values]
    for text in [*unescaped, *values, *texts, pattern, unescaped[0] + "x", ""]:
        assert fast.matches(text) == re2.matches(text), (pattern, text)


def test_a_pattern_with_any_metacharacter_is_compiled() -> None:
    assert anchored("4.|79").matches("48") and not anchored("4.|79").matches("4\n")
    assert anchored("gpu(0|1)").matches("gpu1")


def test_a_set_pattern_still_gives_label_replace_its_match() -> None:
    regex = anchored("a|b")
    match = regex.search("b")
    assert match is not None and match.group(0) == "b" and regex.group_names == ("",)
    assert replace_all(compile_go("a|b"), "cab", "<$0>") == "c<a><b>"


def test_the_bundled_rules_load_without_re2() -> None:
    """RE2 and its library cost 2.5 MiB of the daemon's memory budget; the bundled rules need none."""
    code = ("import sys; import gpumon.daemon; from gpumon.rules.service import load_groups; "
            "groups = load_groups([]); assert groups; print('re2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
