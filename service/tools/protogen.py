"""Generate the gRPC Python code from protos/ (``make proto``), twice: for the service and for the client.

- ``service/generated/``: the service's copy. Ray's gRPC proxy imports it as ``service.generated...``.
- ``clients/python/segserve_client/_generated/``: the client distribution's own copy, so that
  ``segserve-client`` installs without the service. It gets only the protos it speaks
  (``segmentation/``): the Open Inference Protocol's (``inference/``) is the service's alone.

protoc names each file by its path under ``protos/`` (``segmentation/v1/segmentation.proto``) and
writes imports from that root (``from segmentation.v1 import segmentation_pb2``). Both copies keep
that file name: protobuf's default descriptor pool accepts the same file twice when it is identical
(the service's tests import both copies in one process), but two names defining the same
``segmentation.v1`` messages would collide ("duplicate symbol"). The imports, and the module name
the message classes report (what pickle records), are rewritten to each copy's package, so neither
copy needs a top-level ``segmentation`` package on ``sys.path``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


class Target(NamedTuple):
    root: Path
    """The folder on ``sys.path`` when the package is imported (relative to the output root)."""
    package: str
    """The generated package's path under ``root``, ``/``-separated."""
    folders: tuple[str, ...] | None = None
    """The top-level folders of ``protos/`` this copy is generated from (None: all)."""


SERVICE = Target(Path("."), "service/generated")
CLIENT = Target(Path("clients/python"), "segserve_client/_generated", folders=("segmentation",))
TARGETS = (SERVICE, CLIENT)


def generate(
    proto_root: Path = PROTOS, out: Path = ROOT, targets: tuple[Target, ...] = TARGETS
) -> list[Path]:
    """Run protoc on every .proto under ``proto_root`` for each target; returns the files written
    (under ``out / target.root``)."""
    written = []
    for target in targets:
        written += _generate_one(proto_root, out / target.root, target.package, target.folders)
    return written


def _generate_one(
    proto_root: Path, root: Path, package: str, folders: tuple[str, ...] | None = None
) -> list[Path]:
    protos = sorted(
        p
        for p in proto_root.rglob("*.proto")
        if folders is None or p.relative_to(proto_root).parts[0] in folders
    )
    dest = root / package
    dest.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    tops = sorted({p.relative_to(proto_root).parts[0].removesuffix(".proto") for p in protos})
    prefix = package.replace("/", ".")
    written = []
    for p in protos:
        rel = p.relative_to(proto_root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = dest / f"{rel}{suffix}"
            path.write_text(_in_package(path.read_text(), tops, prefix))
            written.append(path)
    top_package = root / package.split("/")[0]
    for folder in {w.parent for w in written}:
        for d in [folder, *folder.parents]:
            if d == top_package:
                break
            (d / "__init__.py").touch()
    return written


def _in_package(text: str, tops: list[str], prefix: str) -> str:
    """protoc's root-relative module names (``segmentation.v1.x_pb2``) -> ``<prefix>.segmentation...``."""
    names = "|".join(re.escape(t) for t in tops)
    text = re.sub(rf"^from ((?:{names})(?:\.\w+)*) import ", rf"from {prefix}.\1 import ", text, flags=re.M)
    text = re.sub(rf"^import ((?:{names})_pb2) as ", rf"from {prefix} import \1 as ", text, flags=re.M)
    return re.sub(
        rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')((?:{names})[\w.]*')", rf"\1{prefix}.\2", text
    )


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)
