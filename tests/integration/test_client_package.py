"""segserve-client installed alone into a clean venv (from this checkout's clients/python) against the
real service: it installs none of the service's heavy dependencies, loads none of them, and gets the
label maps the model gives when called directly, over HTTP and gRPC, from Python and its command line.

The install takes the client's dependencies at the service's pinned versions (a constraints file):
the files the service's own install already used, so pip finds them where it found those (its cache
or the configured index), and a client range that excluded a service pin would fail here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.training.semantic import held_out_seeds
from service.training.shapes import make_sample
from tests.conftest import ROOT, png_bytes
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
MODEL = "unet-shapes"
CLIENT_DEPENDENCIES = ("numpy", "pillow", "grpcio", "protobuf", "httpx")
NEVER_INSTALLED = ("torch", "torchvision", "ray", "opencv-python-headless", "opencv-python", "pycocotools")


def clean_env() -> dict[str, str]:
    """This process's environment without what would point a venv's python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=clean_env(), **kwargs)
    assert done.returncode == 0 or kwargs.get("check") is False, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def service_pins() -> str:
    """``name==version`` of the service's pins for the client's dependencies (pip constraints)."""
    import tomllib

    from packaging.requirements import Requirement

    lines = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {r.name: str(r) for r in map(Requirement, lines)}
    return "\n".join(pins[name] for name in CLIENT_DEPENDENCIES) + "\n"


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A venv with ``pip install <checkout>/clients/python`` and nothing else; prints how long it took."""
    tmp = tmp_path_factory.mktemp("client-venv")
    source = tmp / "clients-python"  # a copy: a stale build/ in the checkout cannot leak into the wheel
    shutil.copytree(
        ROOT / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    (tmp / "constraints.txt").write_text(service_pins())
    start = time.monotonic()
    run(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    # The running pip installs into the new venv (--python): no ensurepip, no second pip to fetch.
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
        "--constraint", tmp / "constraints.txt", source,
        timeout=600,
    )  # fmt: skip
    print(f"\nclean venv + pip install ./clients/python: {time.monotonic() - start:.1f} s")
    return tmp / "venv"


def test_the_venv_holds_the_client_and_its_five_dependencies_only(client_venv):
    script = (
        "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
    )
    listed = run(client_venv / "bin" / "python", "-I", "-c", script).stdout.split()
    names = {name.lower().replace("_", "-") for name in listed}
    assert {"segserve-client", *CLIENT_DEPENDENCIES} <= names
    assert not names & set(NEVER_INSTALLED)
    assert "segserve" not in names  # the service itself


def test_the_installed_client_against_the_real_service(client_venv, service, repository, tmp_path):
    python = client_venv / "bin" / "python"
    image = make_sample(held_out_seeds(1)[0], (150, 200)).image
    body = png_bytes(image)
    (tmp_path / "image.png").write_bytes(body)
    frames = tmp_path / "frames"
    frames.mkdir()
    frame_bodies = {
        f"f{i}": png_bytes(make_sample(seed, (96, 128)).image) for i, seed in enumerate(held_out_seeds(3))
    }
    for name, frame in frame_bodies.items():
        (frames / f"{name}.png").write_bytes(frame)
    out = tmp_path / "out"
    out.mkdir()

    script = Path(__file__).with_name("client_in_venv.py")
    done = run(
        python,
        "-I",
        script,
        service.url,
        service.grpc_target,
        MODEL,
        tmp_path / "image.png",
        frames,
        out,
        cwd=tmp_path,
    )
    report = json.loads(done.stdout)

    assert Path(report["client_file"]).is_relative_to(client_venv)  # the installed copy, not the checkout's
    assert report["loaded"] == []
    assert report["ready"] == [True, True]
    assert report["models"] == [sorted(repository.names())] * 2
    assert report["unknown_model"] == [404, "model_not_found"]
    expected = direct_labels(repository, MODEL, body)
    for name in ("http-png", "grpc-rle", "grpc-raw"):
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), expected, err_msg=name)
    assert report["http-png"]["classes"] == report["grpc-rle"]["classes"]
    for name, frame in frame_bodies.items():
        np.testing.assert_array_equal(
            np.load(out / f"stream-{name}.npy"), direct_labels(repository, MODEL, frame)
        )

    # The console script: segment (gRPC), models (HTTP), stream (a folder; a video needs the extra).
    cli = client_venv / "bin" / "segserve-client"
    run(
        cli,
        "segment",
        tmp_path / "image.png",
        "--model",
        MODEL,
        "--grpc",
        service.grpc_target,
        "--out",
        tmp_path / "mask.png",
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), expected)
    listing = run(cli, "models", "--url", service.url).stdout.splitlines()
    assert listing[0].split() == ["MODEL", "TASK", "VERSION", "INPUT", "CLASSES"]
    assert sorted(line.split()[0] for line in listing[1:]) == sorted(repository.names())
    streamed = run(
        cli,
        "stream",
        frames,
        "--model",
        MODEL,
        "--grpc",
        service.grpc_target,
        "--out-dir",
        tmp_path / "masks",
        "--quiet",
    )
    assert "3 frames (0 failed)" in streamed.stdout
    for name, frame in frame_bodies.items():
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(mask, direct_labels(repository, MODEL, frame))
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)
    video = run(cli, "stream", tmp_path / "clip.mp4", "--model", MODEL, check=False)
    assert video.returncode == 2 and "segserve-client[video]" in video.stderr
