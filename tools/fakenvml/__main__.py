"""`python -m tools.fakenvml OUTDIR [--sanitize address|thread]`: build the fake libnvidia-ml.so.1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.fakenvml import SANITIZERS, BuildError, build


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fakenvml", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--capture", type=Path, help="capture used when FAKENVML_CAPTURE is unset")
    parser.add_argument("--sanitize", choices=sorted(SANITIZERS), help="build with ASan and UBSan, or TSan")
    args = parser.parse_args()
    try:
        path = build(args.outdir, default_capture=args.capture and args.capture.resolve(), sanitize=args.sanitize)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
