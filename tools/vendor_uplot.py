"""Vendor uPlot (the console's charts) from the npm registry into gpumon/console/static/vendor/uplot/.

    python -m tools.vendor_uplot [VERSION]

Downloads the package tarball the registry lists for VERSION, checks it against the registry's sha512
`integrity`, and writes the minified IIFE build, its CSS and the MIT licence next to a MANIFEST.json
(version, source, sha256 of each file) that tests/console/test_assets.py checks. The files are committed
and ship in the wheel: the console must work with no network (no CDN, nothing fetched at run time) and
needs no JavaScript build step.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.6.32"
OUT = Path(__file__).resolve().parents[1] / "gpumon" / "console" / "static" / "vendor" / "uplot"
FILES = {"package/dist/uPlot.iife.min.js": "uPlot.iife.min.js", "package/dist/uPlot.min.css": "uPlot.min.css",
         "package/LICENSE": "LICENSE"}


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else VERSION
    with urllib.request.urlopen(f"https://registry.npmjs.org/uplot/{version}", timeout=30) as r:
        dist = json.load(r)["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=60) as r:
        tarball = r.read()
    algorithm, _, digest = dist["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != digest:
        raise SystemExit(f"uplot {version}: the tarball does not match the registry's integrity {dist['integrity']}")
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {"package": "uplot", "version": version, "tarball": dist["tarball"], "integrity": dist["integrity"],
                "sha256": {}}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        for member, name in FILES.items():
            extracted = tar.extractfile(member)
            if extracted is None:
                raise SystemExit(f"uplot {version}: {member} is not in the package")
            data = extracted.read()
            (OUT / name).write_bytes(data)
            manifest["sha256"][name] = hashlib.sha256(data).hexdigest()
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"uplot {version} written to {OUT}")


if __name__ == "__main__":
    main()
