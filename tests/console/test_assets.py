"""The vendored uPlot is the npm release tools/vendor_uplot.py fetched (its MANIFEST.json records the
registry's integrity and each file's sha256), ships with its licence, and is in the wheel's package data."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

from gpumon.console import assets

ROOT = Path(__file__).resolve().parents[2]
UPLOT = assets.STATIC / "vendor" / "uplot"


def test_the_vendored_files_are_the_release_the_manifest_names() -> None:
    manifest = json.loads((UPLOT / "MANIFEST.json").read_text())
    assert manifest["package"] == "uplot" and manifest["integrity"].startswith("sha512-")
    assert manifest["tarball"] == f"https://registry.npmjs.org/uplot/-/uplot-{manifest['version']}.tgz"
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((UPLOT / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


def test_every_static_file_is_served_and_packaged() -> None:
    served = assets.load()
    assert {"console.js", "console.css", "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css",
            "vendor/uplot/LICENSE"} <= set(served)
    assert served["console.js"][1] == "text/javascript" and served["console.css"][1] == "text/css"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gpumon"]
    package = ROOT / "gpumon"
    packaged = {p for pattern in patterns for p in package.glob(pattern)}
    for path in served:
        assert assets.STATIC / path in packaged, f"{path} is not in the wheel's package data"
