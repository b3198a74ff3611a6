"""Brought models through the real service, over HTTP and gRPC: each format once, equal to the direct call.

smp (pytorch) and ONNX are the shipped smp-unet-shapes pair in the session's application; torchvision
and torch.export are random-weight entries of a small repository deployed as a second application.
"""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest
import torch

from service.config import load_repository
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.models.registry import load_model
from service.training.demo_entries import random_entry, write_repository
from service.training.export import export_program
from service.training.semantic import held_out_seeds
from service.training.shapes import make_sample
from tests.conftest import ROOT, png_bytes
from tests.integration.apps import extra_app, light_args
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
APP = "byom"
SIZES = ((150, 200), (128, 96))


def bodies() -> list[bytes]:
    return [png_bytes(make_sample(seed, SIZES[i % 2]).image) for i, seed in enumerate(held_out_seeds(2))]


def over_http(client, model: str, body: bytes, prefix: str = "") -> np.ndarray:
    r = client.post(
        f"{prefix}/v1/models/{model}/segment", content=body, headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text
    return decode_label_png(base64.b64decode(r.json()["mask"]["data"]))


def over_grpc(stub, model: str, body: bytes, app: str | None = None) -> np.ndarray:
    metadata = [("application", app)] if app else None
    response = stub.Segment(pb.SegmentRequest(model=model, image=body), timeout=60, metadata=metadata)
    return decode_label_png(response.mask_png)


@pytest.mark.parametrize("model", ["smp-unet-shapes", "smp-unet-shapes-onnx"])
def test_shipped_smp_and_onnx(service, repository, model):
    stub = service.grpc_stub()
    with service.http() as client:
        for body in bodies():
            expected = direct_labels(repository, model, body)
            np.testing.assert_array_equal(over_http(client, model, body), expected)
            np.testing.assert_array_equal(over_grpc(stub, model, body), expected)


@pytest.fixture(scope="module")
def byom_repository():
    """torchvision LR-ASPP (random weights) and its torch.export program, inside models/ (weights paths
    may not leave the repository's folder); removed afterwards."""
    folder = ROOT / "models" / f".test-byom-{os.getpid()}"
    small = {"mode": "letterbox", "size": 96, "size_divisor": 32}
    resources = {"num_replicas": 1, "num_cpus": 0, "torch_threads": 1}
    try:
        tv = random_entry(
            folder, "tv-lraspp", "torchvision.lraspp_mobilenet_v3_large", classes=4,
            input=small, output={"key": "out"}, deployment=resources,
        )  # fmt: skip
        torch.set_num_threads(1)
        network = load_model(
            load_repository(write_repository(folder, [tv])).get("tv-lraspp"), folder / tv["weights"]
        )
        export_program(network, folder / "tv-lraspp.pt2", size=96, key="out")
        program = {
            **{k: v for k, v in tv.items() if k not in ("architecture", "arguments", "output")},
            "name": "tv-lraspp-pt2", "format": "torch_export", "weights": "tv-lraspp.pt2",
        }  # fmt: skip
        path = write_repository(folder, [tv, program])
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_torchvision_and_torch_export(service, byom_repository):
    repository = load_repository(byom_repository)
    stub = service.grpc_stub()
    with (
        extra_app(service, APP, light_args(str(byom_repository.relative_to(ROOT)))),
        service.http() as client,
    ):
        for model in ("tv-lraspp", "tv-lraspp-pt2"):
            for body in bodies():
                expected = direct_labels(repository, model, body)
                np.testing.assert_array_equal(over_http(client, model, body, f"/{APP}"), expected)
                np.testing.assert_array_equal(over_grpc(stub, model, body, APP), expected)
            info = client.get(f"/{APP}/v1/models/{model}").json()
            assert info["architecture"] == (
                "torch_export" if model.endswith("pt2") else "torchvision.lraspp_mobilenet_v3_large"
            )
