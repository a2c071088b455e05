"""python -m grafana.generate [--check]: write grafana/dashboards/*.json, or exit 1 when they are stale."""

from __future__ import annotations

import sys
from pathlib import Path

from grafana.generate import render

OUT = Path(__file__).resolve().parent.parent / "dashboards"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, content in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(content)
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m grafana.generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
