"""The committed gRPC code in service/generated/ must be what `make proto` writes from protos/."""

import shutil
from pathlib import Path

from service.tools.protogen import PACKAGE, generate

ROOT = Path(__file__).resolve().parents[2]


def stale_files(proto_root: Path, committed_root: Path, tmp: Path) -> list[str]:
    """Regenerate into ``tmp`` and list generated files that differ from ``committed_root``'s."""
    written = generate(proto_root, tmp)
    stale = []
    for path in written:
        rel = path.relative_to(tmp)
        committed = committed_root / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    return stale


def test_committed_generated_code_is_fresh(tmp_path):
    stale = stale_files(ROOT / "protos", ROOT, tmp_path)
    assert not stale, f"run `make proto`: stale generated files {stale}"


def test_the_check_fails_on_a_modified_proto(tmp_path):
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    proto = protos / "segmentation" / "v1" / "segmentation.proto"
    proto.write_text(
        proto.read_text().replace(
            "  uint32 batch_size = 17;", "  uint32 batch_size = 17;\n  string extra = 99;"
        )
    )
    stale = stale_files(protos, ROOT, tmp_path / "out")
    assert f"{PACKAGE}/segmentation/v1/segmentation_pb2.py" in stale
