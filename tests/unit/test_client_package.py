"""The client distribution (clients/python): light to import, its dependency ranges agree with the
service's pins and the generated code, and it builds as the wheel the docs name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
GENERATED = CLIENT / "segserve_client" / "_generated" / "segmentation" / "v1"
HEAVY = ("torch", "ray", "cv2", "pycocotools", "service")


def client_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    return {r.name: r for r in map(Requirement, project["dependencies"])}


def service_pins() -> dict[str, Version]:
    pins = {}
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # the service pins each dependency exactly
        assert spec.operator == "==", line
        pins[requirement.name] = Version(spec.version)
    return pins


def test_the_client_depends_on_the_light_five_only():
    assert sorted(client_requirements()) == ["grpcio", "httpx", "numpy", "pillow", "protobuf"]


def test_the_services_pins_satisfy_the_clients_ranges():
    pins = service_pins()
    for name, requirement in client_requirements().items():
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


def test_grpcio_and_protobuf_floors_are_what_the_generated_code_checks():
    grpc_code = (GENERATED / "segmentation_pb2_grpc.py").read_text()
    (grpc_generated,) = re.findall(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code)
    pb2 = (GENERATED / "segmentation_pb2.py").read_text()
    major, minor, patch = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2).groups()
    requirements = client_requirements()
    assert str(requirements["grpcio"].specifier) == f">={grpc_generated}"
    assert set(map(str, requirements["protobuf"].specifier)) == {
        f">={major}.{minor}.{patch}",
        f"<{int(major) + 1}",
    }


def test_using_the_client_loads_nothing_of_the_service():
    """Every client module, a gRPC channel, and the RLE and PNG decoders: none of the service's
    heavy dependencies (nor the service itself) end up in ``sys.modules``."""
    script = f"""
import sys
import numpy as np
import segserve_client
from segserve_client import GrpcClient, HttpClient, connect
from segserve_client import cli, decode, rle
cli.build_parser()
with connect("grpc://127.0.0.1:9") as g, connect("http://127.0.0.1:9") as h:
    pass
png = decode.encode_label_png(np.eye(3, dtype=np.uint8))
assert (decode.decode_mask_png(png, [])[0] == np.eye(3)).all()
assert rle.decode_rle({{"size": [2, 2], "counts": "121"}}).sum() == 2
loaded = {{name.partition(".")[0] for name in sys.modules}}
print(sorted(loaded & set({HEAVY!r})))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_wheel_is_pure_python_and_carries_its_generated_code(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # Built with this environment's setuptools (>=77, as the client's build-system asks: grpcio-tools
    # and torch require it too), so no index is needed; tests/integration builds it the way users do.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", tmp_path, source], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "segserve_client-0.1.0-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "segserve_client/__init__.py",
        "segserve_client/py.typed",
        "segserve_client/_generated/segmentation/v1/segmentation_pb2.py",
        "segserve_client/_generated/segmentation/v1/segmentation_pb2.pyi",
        "segserve_client/_generated/segmentation/v1/segmentation_pb2_grpc.py",
    ):
        assert expected in names
    assert all(n.startswith(("segserve_client/", "segserve_client-0.1.0.dist-info/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read("segserve_client-0.1.0.dist-info/entry_points.txt").decode()
    assert "segserve-client = segserve_client.cli:main" in entry_points
