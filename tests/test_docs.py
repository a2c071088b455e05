"""Docs that must follow the code: every configuration key in docs/configuration.md, every bundled alert
in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gpumon.config import Config
from gpumon.rules.service import load_groups

DOCS = Path(__file__).resolve().parent.parent / "docs"


def keys(model: type[msgspec.Struct], prefix: str = "") -> list[str]:
    out = []
    for field in msgspec.structs.fields(model):
        key = field.encode_name  # the name in the file (`continue`, not `continue_`)
        out.append(prefix + key)
        sub = field.type
        if isinstance(sub, type) and issubclass(sub, msgspec.Struct):
            out.extend(keys(sub, prefix + key + "."))
    return out


def test_every_configuration_key_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text() + (DOCS / "notifications.md").read_text() \
        + (DOCS / "rules.md").read_text()
    missing = [k for k in keys(Config) if not re.search(rf"(^|\s){re.escape(k.rsplit('.', 1)[-1])}:", text, re.M)]
    assert not missing, f"configuration keys not in docs/configuration.md: {missing}"


def test_every_bundled_alert_has_an_operations_entry() -> None:
    text = (DOCS / "operations.md").read_text()
    names = [r.name for g in load_groups([]) for r in g.rules]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"bundled alerts without an entry in docs/operations.md: {missing}"
