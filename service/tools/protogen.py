"""Generate the gRPC Python code in service/generated/ from protos/ (``make proto``).

The proto root is mapped to the package path ``service/generated`` so the generated modules import
each other as ``service.generated...``: Ray's gRPC proxy imports them by that name at start.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PACKAGE = "service/generated"


def generate(proto_root: Path = PROTOS, out: Path = ROOT) -> list[Path]:
    """Run protoc on every .proto under ``proto_root``; returns the files written under ``out``."""
    protos = sorted(proto_root.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PACKAGE}={proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for p in protos:
        rel = p.relative_to(proto_root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(out / PACKAGE / f"{rel}{suffix}")
    for folder in {w.parent for w in written}:
        for d in [folder, *folder.parents]:
            if d == out / "service":
                break
            (d / "__init__.py").touch()
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
