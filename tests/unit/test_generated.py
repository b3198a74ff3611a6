"""The committed gRPC code, the service's (service/generated/) and the client's
(clients/python/segserve_client/_generated/), must be what `make proto` writes from protos/; both
copies load together in one process."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.tools.protogen import CLIENT, SERVICE, generate

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PB2 = "service.generated.segmentation.v1.segmentation_pb2"
CLIENT_PB2 = "segserve_client._generated.segmentation.v1.segmentation_pb2"


def stale_files(proto_root: Path, committed_root: Path, tmp: Path) -> list[str]:
    """Regenerate into ``tmp`` and list generated files that differ from ``committed_root``'s."""
    written = generate(proto_root, tmp)
    stale = []
    for path in written:
        rel = path.relative_to(tmp)
        committed = committed_root / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(rel.as_posix())
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
    for target in (SERVICE, CLIENT):
        assert (target.root / target.package / "segmentation/v1/segmentation_pb2.py").as_posix() in stale


def test_generated_imports_stay_inside_their_package():
    for target in (SERVICE, CLIENT):
        grpc_module = ROOT / target.root / target.package / "segmentation/v1/segmentation_pb2_grpc.py"
        prefix = target.package.replace("/", ".")
        assert f"from {prefix}.segmentation.v1 import segmentation_pb2 as" in grpc_module.read_text()
        pb2 = (ROOT / target.root / target.package / "segmentation/v1/segmentation_pb2.py").read_text()
        assert f"'{prefix}.segmentation.v1.segmentation_pb2'" in pb2


@pytest.mark.parametrize("order", [(SERVICE_PB2, CLIENT_PB2), (CLIENT_PB2, SERVICE_PB2)])
def test_both_copies_load_in_one_process(order):
    """Both register the same file (segmentation/v1/segmentation.proto) in protobuf's default pool:
    accepted because identical; under two names the second import would fail ("duplicate symbol").
    Neither puts a top-level ``segmentation`` module in ``sys.modules``."""
    script = f"""
import importlib, sys
first, second = (importlib.import_module(m) for m in {list(order)!r})
importlib.import_module({order[1]!r} + "_grpc")
assert first.SegmentRequest is second.SegmentRequest
assert first.DESCRIPTOR.name == "segmentation/v1/segmentation.proto"
request = first.SegmentRequest(model="m", format=first.MASK_FORMAT_RAW)
assert second.SegmentRequest.FromString(request.SerializeToString()) == request
assert not any(m == "segmentation" or m.startswith("segmentation.") for m in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_wire_enum_names_the_services_mask_formats() -> None:
    """service.types.MASK_FORMATS is where the formats are spelled; the proto's enum must name the
    same ones (the gRPC converters of the service and the client derive their tables from it)."""
    from segserve_client.grpc import FORMAT_TO_PB as CLIENT_TABLE

    from service.api.grpc_convert import FORMAT_TO_PB as SERVICE_TABLE
    from service.generated.segmentation.v1 import segmentation_pb2 as pb
    from service.types import MASK_FORMATS

    names = {
        n.removeprefix("MASK_FORMAT_").lower() for n in (v.name for v in pb.MaskFormat.DESCRIPTOR.values)
    }
    names -= {"unspecified"}
    assert names == set(MASK_FORMATS) == set(SERVICE_TABLE) == set(CLIENT_TABLE)
    assert SERVICE_TABLE == CLIENT_TABLE


def test_the_open_inference_protocol_is_generated_for_the_service_only():
    """segserve-client does not speak the Open Inference Protocol: its copy has no ``inference``."""
    assert (ROOT / SERVICE.root / SERVICE.package / "inference/grpc_predict_v2_pb2.py").exists()
    assert not (ROOT / CLIENT.root / CLIENT.package / "inference").exists()
