"""Instance segmentation (torchvision Mask R-CNN) through the real service, over HTTP and gRPC.

An application ("instance", at /instance) serves a small Mask R-CNN with seeded random weights
(``tests/instance_entry.py``), written as safetensors into the model repository for the module's
duration. Every served answer must equal the model called in this process through the same
preparation and post-processing (``tests/unit/test_instance_model.py`` shows that equals what
torchvision's own ``model(images)`` gives).
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest
import torch
import yaml
from segserve_client import HttpClient

from service.config import ModelSpec, load_repository
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.decode import decode_image
from service.imaging.encode import decode_label_png, decode_rle
from service.imaging.geometry import fit_to_policy
from service.imaging.instance import describe_instances, instance_id_map
from service.models.instance_inference import InstanceRunner
from service.models.registry import build_model, load_model, save_weights
from service.training.shapes import make_sample
from service.types import PreparedImage, SegmentOptions
from tests.conftest import png_bytes
from tests.instance_entry import instance_entry
from tests.integration.apps import ROOT, extra_app, light_args

pytestmark = pytest.mark.integration
APP = "instance"
MODEL = "maskrcnn-tiny"
META = [("application", APP)]
BODIES = [png_bytes(make_sample(seed, size).image) for seed, size in ((21, (120, 160)), (22, (90, 200)))]


@pytest.fixture(scope="module")
def repository_path():
    """A one-model repository in models/ (weights may not leave its folder), removed afterwards."""
    tag = f".test-instance-{os.getpid()}"
    weights, path = ROOT / "models" / f"{tag}.safetensors", ROOT / "models" / f"{tag}.yaml"
    entry = instance_entry(name=MODEL, weights=weights.name)
    try:
        torch.manual_seed(0)
        save_weights(build_model(ModelSpec.model_validate(entry)), weights)
        path.write_text(yaml.safe_dump({"models": [entry]}, sort_keys=False))
        yield path
    finally:
        path.unlink(missing_ok=True)
        weights.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def app(service, repository_path):
    with extra_app(service, APP, light_args(str(repository_path.relative_to(ROOT)))) as url:
        yield url


@pytest.fixture(scope="module")
def direct(repository_path):
    """The model called in this process, one thread, one image per forward (as the served calls below,
    made one at a time, run), through the same preparation and post-processing as the service."""
    repository = load_repository(repository_path)
    spec = repository.get(MODEL)
    runner = InstanceRunner(spec, load_model(spec, repository.weights_path(spec)), torch.device("cpu"))
    names = {c.id: c.name for c in spec.classes}

    def run(body: bytes, fmt: str = "rle"):
        torch.set_num_threads(1)
        pixels, geometry = fit_to_policy(decode_image(body, max_pixels=10**9), spec.input)
        (segmentation,) = runner.run([PreparedImage(pixels, geometry, SegmentOptions(model=MODEL))], [0.0])
        instances = segmentation.instances
        return instance_id_map(instances), describe_instances(instances, names, fmt)

    return run


def post(url: str, body: bytes, query: str = "", **headers):
    return httpx.post(
        f"{url}/v1/models/{MODEL}/segment{query}",
        content=body,
        headers={"content-type": "image/png", **headers},
        timeout=120,
    )


def test_metadata_says_instance_and_its_thresholds(service, app):
    info = httpx.get(f"{app}/v1/models/{MODEL}", timeout=30).json()
    assert info["task"] == "instance" and info["architecture"] == "torchvision.maskrcnn_resnet50_fpn"
    assert info["instance"] == {
        "score_threshold": 0.0,
        "nms_threshold": 0.5,
        "max_detections": 5,
        "mask_threshold": 0.5,
    }
    grpc_info = service.grpc_stub().GetModel(pb.GetModelRequest(name=MODEL), timeout=30, metadata=META)
    assert grpc_info.task == "instance" and grpc_info.instance.max_detections == 5
    assert grpc_info.input.mode == "shortest_edge" and grpc_info.input.max_size == 128


@pytest.mark.parametrize("fmt", ["rle", "polygons", "png"])
def test_served_instances_over_http_equal_the_direct_call(app, direct, fmt):
    for body in BODIES:
        r = post(app, body, f"?format={fmt}")
        assert r.status_code == 200, r.text
        answer = r.json()
        ids, expected = direct(body, fmt)
        assert answer["task"] == "instance" and (answer["height"], answer["width"]) == ids.shape
        assert answer["instances"] == expected
        assert len(expected) > 0
        if fmt == "png":
            np.testing.assert_array_equal(decode_label_png(base64.b64decode(answer["mask"]["data"])), ids)
        if fmt == "rle":
            for k, item in enumerate(answer["instances"], start=1):
                # The id map gives each pixel to the best-scoring instance that covers it.
                assert np.all(decode_rle(item["rle"])[ids == k])


def test_served_instances_over_grpc_equal_the_direct_call(service, app, direct):
    for body in BODIES:
        ids, expected = direct(body, "rle")
        request = pb.SegmentRequest(model=MODEL, image=body, format=pb.MASK_FORMAT_RLE)
        response = service.grpc_stub().Segment(request, timeout=120, metadata=META)
        assert response.task == "instance"
        served = [
            {
                "id": i.id,
                "category_id": i.category_id,
                "name": i.name,
                "score": i.score,
                "bbox": list(i.bbox),
                "area": i.area,
                "rle": {"size": list(i.rle.size), "counts": i.rle.counts},
            }
            for i in response.instances
        ]
        assert served == expected  # float32 scores and boxes: protobuf floats carry them exactly
        png = service.grpc_stub().Segment(
            pb.SegmentRequest(model=MODEL, image=body), timeout=120, metadata=META
        )
        np.testing.assert_array_equal(decode_label_png(png.mask_png), ids)
        assert [i.id for i in png.instances] == [e["id"] for e in expected]
        assert not any(i.HasField("rle") or i.polygons for i in png.instances)


def test_accept_png_overlay_and_the_client(app, direct):
    body = BODIES[0]
    ids, expected = direct(body, "png")
    bare = post(app, body, accept="image/png")
    assert bare.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_label_png(bare.content), ids)
    overlay = post(app, body, "?overlay=true").json()["overlay"]
    assert overlay["media_type"] == "image/png" and overlay["data"]
    with HttpClient(app, timeout_s=120) as client:
        result = client.segment(body, model=MODEL)
    assert result.task == "instance" and result.instances == expected
    np.testing.assert_array_equal(result.labels, ids)


def test_coco_panoptic_is_refused_with_the_reason_over_both_protocols(service, app):
    r = post(app, BODIES[0], "?format=coco_panoptic")
    assert r.status_code == 400
    assert "instance model" in r.json()["error"]["message"]
    request = pb.SegmentRequest(model=MODEL, image=BODIES[0], format=pb.MASK_FORMAT_COCO_PANOPTIC)
    with pytest.raises(grpc.RpcError) as e:
        service.grpc_stub().Segment(request, timeout=60, metadata=META)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance model" in e.value.details()
    assert post(app, BODIES[0]).status_code == 200  # and it keeps serving


def test_concurrent_requests_share_forwards_and_still_get_their_own_instances(app, direct):
    """Same-size requests sent together: some are batched (x-batch-size > 1). A batch's convolutions
    round differently from a single image's, so the comparison with the single direct call allows
    float noise: same instances and classes, scores and boxes within rounding."""
    bodies = [png_bytes(make_sample(40 + i, (120, 160)).image) for i in range(4)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: post(app, b, "?format=rle"), bodies + bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    for body, r in zip(bodies + bodies, responses, strict=True):
        _, expected = direct(body, "rle")
        served = r.json()["instances"]
        assert [(i["id"], i["category_id"]) for i in served] == [
            (e["id"], e["category_id"]) for e in expected
        ]
        np.testing.assert_allclose([i["score"] for i in served], [e["score"] for e in expected], atol=1e-4)
        np.testing.assert_allclose([i["bbox"] for i in served], [e["bbox"] for e in expected], atol=0.05)
