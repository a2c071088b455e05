"""Regenerate podresources_pb2.py, .pyi and podresources_pb2_grpc.py from podresources.proto.

    .venv/bin/python -m gpumon.kubelet.generate          # rewrite them
    .venv/bin/python -m gpumon.kubelet.generate --check  # exit 1 if the checked-in ones are stale

Needs grpcio-tools (the test extras pin the version the checked-in files were made with).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = "gpumon/kubelet/podresources.proto"
OUTPUTS = ("podresources_pb2.py", "podresources_pb2.pyi", "podresources_pb2_grpc.py")


def generate(out_root: Path) -> dict[str, str]:
    """The generated files' text, made under out_root (imports say `gpumon.kubelet`)."""
    from grpc_tools import protoc  # a test/development dependency only

    target = out_root / "gpumon" / "kubelet"
    target.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={out_root}", f"--pyi_out={out_root}",
                        f"--grpc_python_out={out_root}", str(ROOT / PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed on {PROTO} ({code})")
    return {name: (target / name).read_text() for name in OUTPUTS}


def stale() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        made = generate(Path(tmp))
    return [name for name, text in made.items() if not (HERE / name).is_file() or (HERE / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for name in bad:
            print(f"{HERE / name}: stale, regenerate with python -m gpumon.kubelet.generate")
        return 1 if bad else 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
            print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
