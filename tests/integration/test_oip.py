"""The Open Inference Protocol on the real service, called with tritonclient (HTTP and gRPC) as Triton
and KServe users call it: metadata, readiness, every input kind, every output, binary data, a batch,
each error. The label maps must equal what ``/v1`` answers for the same image and what the model gives
when called directly.

tritonclient pins protobuf < 7 and the service protobuf 7, so it cannot share the service's venv: the
test makes a venv of its own from ``tritonclient-requirements.txt`` (cached by that file's content,
~1 min the first time) and runs ``oip_tritonclient.py`` there once; the tests below read its report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from service.imaging.geometry import fit_to_policy
from service.imaging.panoptic_format import decode_panoptic_png
from service.models.registry import to_model_input
from service.training.semantic import held_out_seeds
from service.training.shapes import make_sample
from tests.conftest import png_bytes
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
REQUIREMENTS = HERE / "tritonclient-requirements.txt"
UNET, PANOPTIC = "unet-shapes", "panoptic-shapes"
PROTOCOLS = ("http", "grpc")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _works(python: Path) -> bool:
    if not python.exists():
        return False
    check = [str(python), "-I", "-c", "import tritonclient.http, tritonclient.grpc"]
    return subprocess.run(check, capture_output=True, env=clean_env()).returncode == 0


@pytest.fixture(scope="module")
def tritonclient_python() -> Path:
    """The python of a venv with tritonclient at the pinned versions, built once per requirements."""
    key = hashlib.sha256((REQUIREMENTS.read_text() + sys.version).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segserve" / "test-venvs"
    venv = cache / f"tritonclient-{key}"
    python = venv / "bin" / "python"
    if _works(python):
        return python
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="tritonclient-", dir=cache))
    start = time.monotonic()
    env = clean_env()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", building], check=True, env=env)
    # The running pip installs into the new venv (--python): no ensurepip, no second pip to fetch.
    install = [sys.executable, "-m", "pip", "--python", building / "bin" / "python", "install", "--quiet"]
    done = subprocess.run(
        [*install, "-r", REQUIREMENTS], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(venv, ignore_errors=True)
    building.rename(venv)  # whole or not at all: a broken build never passes for the cached venv
    print(f"\ntritonclient venv: {time.monotonic() - start:.1f} s")
    assert _works(python)
    return python


class Inputs:
    """What the test sends, and what /v1 and the model called directly answer for it."""

    def __init__(self, work: Path, repository, service) -> None:
        seeds = list(held_out_seeds(6))
        self.semantic = png_bytes(make_sample(seeds[0], (150, 200)).image)  # letterboxed: resized
        self.panoptic = png_bytes(make_sample(seeds[1], (120, 128)).image)
        self.pixels = np.stack([make_sample(s, (150, 200)).image for s in seeds[2:5]])
        fitted, geometry = fit_to_policy(make_sample(seeds[5], (96, 128)).image, repository.get(UNET).input)
        assert geometry.scaled == geometry.original == geometry.padded  # the network's input as it is
        self.fitted = fitted
        spec = repository.get(UNET)
        self.normalized = to_model_input(torch.tensor(fitted)[None], spec.input.mean, spec.input.std).numpy()
        (work / "semantic.png").write_bytes(self.semantic)
        (work / "panoptic.png").write_bytes(self.panoptic)
        np.save(work / "pixels.npy", self.pixels)
        np.save(work / "normalized.npy", self.normalized)


@pytest.fixture(scope="module")
def run(tritonclient_python, service, repository, tmp_path_factory):
    """tritonclient's calls, once: (report, outputs folder, inputs)."""
    work = tmp_path_factory.mktemp("oip")
    inputs = Inputs(work, repository, service)
    host = service.url.removeprefix("http://")
    script = [
        str(tritonclient_python),
        "-I",
        str(HERE / "oip_tritonclient.py"),
        host,
        service.grpc_target,
        str(work),
    ]
    start = time.monotonic()
    done = subprocess.run(script, capture_output=True, text=True, env=clean_env(), cwd=work, timeout=600)
    assert done.returncode == 0, done.stderr
    print(f"\ntritonclient session: {time.monotonic() - start:.1f} s")
    return json.loads(done.stdout), work / "out", inputs


def v1(service, model: str, body: bytes, fmt: str = "raw") -> dict:
    with service.http() as c:
        answer = c.post(f"/v1/models/{model}/segment?format={fmt}", content=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def v1_labels(service, model: str, body: bytes) -> np.ndarray:
    mask = v1(service, model, body)["mask"]
    return np.frombuffer(base64.b64decode(mask["data"]), mask["dtype"]).reshape(mask["shape"])


# --- metadata and readiness -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_and_readiness(run, protocol):
    report = run[0][protocol]
    assert report["live"] is True and report["ready"] is True
    assert report["model_ready"][:2] == [True, True]
    server = report["server_metadata"]
    assert server["name"] == "segserve" and "binary_tensor_data" in server["extensions"]
    unet = report["metadata"][UNET]
    assert unet["versions"] == ["1"]
    assert [(t["name"], t["datatype"]) for t in unet["inputs"]] == [
        ("image", "BYTES"),
        ("pixels", "UINT8"),
        ("normalized", "FP32"),
    ]
    assert [t["name"] for t in report["metadata"][PANOPTIC]["outputs"]] == [
        "labels",
        "panoptic_ids",
        "segments",
    ]
    # tritonclient's gRPC JSON writes int64 as strings (proto3 JSON); HTTP gives numbers
    assert [int(d) for d in unet["outputs"][0]["shape"]] == [-1, -1, -1]
    config = report["config"]["config"] if protocol == "grpc" else report["config"]
    assert int(config.get("max_batch_size", 0)) == 0 and all(i["optional"] for i in config["input"])
    assert config["parameters"]["max_batch_size"]["string_value"] == "8"


def test_classes_and_colours_are_in_the_metadata_parameters(run):
    parameters = run[0]["http"]["metadata"][PANOPTIC]["parameters"]
    classes = json.loads(parameters["classes"])
    assert [c["name"] for c in classes] == ["background", "circle", "rectangle", "triangle", "stripes"]
    assert classes[1]["color"] == [230, 25, 75]


def test_an_unknown_model_is_not_ready(run):
    http, grpc = run[0]["http"], run[0]["grpc"]
    assert http["model_ready"][2] is False
    assert grpc["unknown_model_ready"]["status"] == "StatusCode.NOT_FOUND"


def test_reflection_lists_the_inference_service(service):
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    names = {s.name for s in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "segmentation.v1.Segmentation"} <= names


# --- inference --------------------------------------------------------------------------------------------


def load(out: Path, protocol: str, tag: str, name: str) -> np.ndarray:
    return np.load(out / f"{protocol}-{tag}-{name}.npy")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_encoded_image_labels_equal_v1_and_the_model(run, service, repository, protocol):
    report, out, inputs = run
    labels = load(out, protocol, "image", "labels")
    assert report[protocol]["image"]["shapes"]["labels"] == [[1, 150, 200], "uint8"]
    np.testing.assert_array_equal(labels[0], v1_labels(service, UNET, inputs.semantic))
    np.testing.assert_array_equal(labels[0], direct_labels(repository, UNET, inputs.semantic))
    assert len(np.unique(labels)) > 2  # shapes found, not a blank map
    assert report[protocol]["image"]["response"]["id"] == "oip-req-1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_of_pixels_equals_v1_image_by_image(run, service, protocol):
    """Three images in one UINT8 [3, H, W, 3] tensor. A batched forward may round differently from a
    batch of one in the last float bits: at most 0.1 % of pixels may differ (argmax ties)."""
    _, out, inputs = run
    labels = load(out, protocol, "pixels", "labels")
    assert labels.shape == (3, 150, 200)
    for k, picture in enumerate(inputs.pixels):
        assert (labels[k] == v1_labels(service, UNET, png_bytes(picture))).mean() >= 0.999


def test_json_tensors_over_http(run, service):
    _, out, inputs = run
    labels = load(out, "http", "pixels_json", "labels")
    assert labels.shape == (1, 150, 200)
    assert (labels[0] == v1_labels(service, UNET, png_bytes(inputs.pixels[0]))).mean() >= 0.999


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_normalized_fp32_is_the_networks_input(run, service, protocol):
    _, out, inputs = run
    labels = load(out, protocol, "normalized", "labels")
    assert labels.shape == (1, 96, 128)
    np.testing.assert_array_equal(labels[0], v1_labels(service, UNET, png_bytes(inputs.fitted)))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_panoptic_outputs_equal_v1(run, service, protocol):
    report, out, inputs = run
    shapes = report[protocol]["panoptic"]["shapes"]
    assert shapes["labels"] == [[1, 120, 128], "uint8"] and shapes["panoptic_ids"] == [[1, 120, 128], "int32"]
    answer = v1(service, PANOPTIC, inputs.panoptic, "coco_panoptic")
    ids = load(out, protocol, "panoptic", "panoptic_ids")[0]
    np.testing.assert_array_equal(ids, decode_panoptic_png(base64.b64decode(answer["mask"]["data"])))
    (segments,) = json.loads((out / f"{protocol}-panoptic-segments.json").read_text())
    assert segments == answer["segments"] and {s["id"] for s in segments} == set(np.unique(ids)) - {0}
    labels = load(out, protocol, "panoptic", "labels")[0]
    np.testing.assert_array_equal(labels, v1_labels(service, PANOPTIC, inputs.panoptic))
    # only what was asked for
    assert list(report[protocol]["segments_only"]["shapes"]) == ["segments"]


def test_every_output_when_none_is_named(run):
    assert run[0]["grpc"]["all_outputs"] == {"labels": [[2, 150, 200], "uint8"]}


def test_typed_grpc_contents_both_ways(run, service):
    typed, inputs = run[0]["grpc_typed"], run[2]
    assert typed["id"] == "typed-1" and typed["raw"] == 0
    np.testing.assert_array_equal(
        np.array(typed["labels"][0], np.uint8), v1_labels(service, UNET, png_bytes(inputs.pixels[0]))
    )


# --- errors -----------------------------------------------------------------------------------------------

ERRORS = {
    # case: (HTTP status, gRPC status, part of the message)
    "unknown_model": ("404", "StatusCode.NOT_FOUND", "unknown model 'no-such-model'"),
    "unknown_version": ("404", "StatusCode.NOT_FOUND", "has no version '7'"),
    "wrong_datatype": ("400", "StatusCode.INVALID_ARGUMENT", "input 'pixels' must be UINT8, got FP32"),
    "wrong_shape": ("400", "StatusCode.INVALID_ARGUMENT", "must have shape [-1, -1, -1, 3]"),
    "unknown_input": ("400", "StatusCode.INVALID_ARGUMENT", "unknown input 'picture'"),
    "not_an_image": ("400", "StatusCode.INVALID_ARGUMENT", "not a recognised image"),
    "too_many_images": ("400", "StatusCode.INVALID_ARGUMENT", "at most 8 images"),
    "unknown_output": ("400", "StatusCode.INVALID_ARGUMENT", "unknown output 'mask'"),
    "deadline": ("504", "StatusCode.DEADLINE_EXCEEDED", "deadline"),
    "unknown_model_metadata": ("404", "StatusCode.NOT_FOUND", "unknown model 'no-such-model'"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors(run, protocol, case):
    http_status, grpc_status, message = ERRORS[case]
    error = run[0][protocol]["errors"][case]
    assert error["status"] == (http_status if protocol == "http" else grpc_status), error
    assert message in error["message"]


def test_the_service_keeps_serving_and_counts_oip_requests(run, service):
    """After every error above: still ready, and the ingress counted the OIP calls by their protocol."""
    from tests.integration.test_metrics import scrape

    with service.http() as c:
        assert c.get("/v2/health/ready").status_code == 200

    def counted():
        found = scrape(service)
        return {
            p: found.total("ray_seg_requests_total", model=UNET, protocol=p) for p in ("oip_http", "oip_grpc")
        }

    from tests.integration.apps import wait_for

    totals = wait_for(lambda: (t := counted()) and all(v >= 10 for v in t.values()) and t, timeout_s=60)
    assert totals["oip_http"] >= 10 and totals["oip_grpc"] >= 10
