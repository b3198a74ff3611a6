"""Panoptic segmentation through the real service: equal to the direct model + post-processing."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.decode import decode_image
from service.imaging.encode import decode_rle
from service.imaging.geometry import fit_to_policy
from service.imaging.panoptic_format import decode_panoptic_png
from service.models.panoptic_inference import panoptic_answer, panoptic_item
from service.models.registry import load_model, to_model_input
from service.training.semantic import held_out_seeds
from service.training.shapes import CIRCLE, ShapesConfig, make_sample
from tests.conftest import png_bytes

pytestmark = pytest.mark.integration
MODEL = "panoptic-shapes"


@pytest.fixture(scope="module")
def direct(repository):
    """The model called in this process, one thread, through the same post-processing functions."""
    spec = repository.get(MODEL)
    model = load_model(spec, repository.weights_path(spec))

    def run(body: bytes):
        torch.set_num_threads(1)
        fitted, geometry = fit_to_policy(decode_image(body, max_pixels=10**9), spec.input)
        with torch.inference_mode():
            outputs = model(to_model_input(torch.from_numpy(fitted)[None], spec.input.mean, spec.input.std))
            result = panoptic_item({k: v[0] for k, v in outputs.items()}, geometry, spec)
        return panoptic_answer(result, spec)

    return run


def post(client, body: bytes, query: str = "", **headers):
    return client.post(
        f"/v1/models/{MODEL}/segment{query}", content=body, headers={"content-type": "image/png", **headers}
    )


def test_metadata_has_things_and_stuff(service):
    with service.http() as c:
        info = c.get(f"/v1/models/{MODEL}").json()
    assert info["task"] == "panoptic"
    things = {c["name"] for c in info["classes"] if c["isthing"]}
    assert things == {"circle", "rectangle", "triangle"}
    grpc_info = service.grpc_stub().GetModel(pb.GetModelRequest(name=MODEL), timeout=30)
    assert {c.name for c in grpc_info.classes if c.isthing} == things


def test_served_result_equals_direct_call_and_round_trips(service, direct):
    with service.http() as c:
        for seed in held_out_seeds(3):
            body = png_bytes(make_sample(seed, (120, 160), ShapesConfig(stripes=True)).image)
            r = post(c, body)
            assert r.status_code == 200, r.text
            answer = r.json()
            ids = decode_panoptic_png(base64.b64decode(answer["mask"]["data"]))
            semantic, expected_ids, expected_segments = direct(body)
            np.testing.assert_array_equal(ids, expected_ids)
            served = [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in answer["segments"]]
            assert served == [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in expected_segments]
            # id PNG -> segments -> RLE: every segment's RLE decodes to exactly its pixels in the PNG.
            assert set(np.unique(ids)) - {0} == {s["id"] for s in answer["segments"]}
            for s in answer["segments"]:
                mask = decode_rle(s["rle"])
                np.testing.assert_array_equal(mask, ids == s["id"])
                assert int(mask.sum()) == s["area"]
                x, y, w, h = s["bbox"]
                rows, cols = np.nonzero(mask)
                assert (x, y, w, h) == (
                    cols.min(),
                    rows.min(),
                    cols.max() - cols.min() + 1,
                    rows.max() - rows.min() + 1,
                )
            np.testing.assert_array_equal(
                semantic.sum(), sum(cl["id"] * cl["pixels"] for cl in answer["classes"])
            )


def test_accept_png_overlay_and_grpc_give_the_same_ids(service, direct):
    body = png_bytes(make_sample(77, (128, 128), ShapesConfig(stripes=True)).image)
    _, expected_ids, expected_segments = direct(body)
    with service.http() as c:
        bare = post(c, body, accept="image/png")
        overlay = post(c, body, "?overlay=true").json()["overlay"]
    assert bare.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode_panoptic_png(bare.content), expected_ids)
    assert overlay["media_type"] == "image/png" and overlay["data"]
    response = service.grpc_stub().Segment(pb.SegmentRequest(model=MODEL, image=body), timeout=60)
    np.testing.assert_array_equal(decode_panoptic_png(response.mask_png), expected_ids)
    assert [(s.id, s.category_id, s.area) for s in response.segments] == [
        (s["id"], s["category_id"], s["area"]) for s in expected_segments
    ]


def touching_circles() -> tuple[np.ndarray, np.ndarray]:
    """Two same-coloured circles touching on a plain background: only geometry separates them."""
    h, w = 128, 160
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), (40, 90, 160), np.uint8)
    truth = np.zeros((h, w), np.int32)
    for k, cx in enumerate((52, 104), start=1):
        disc = (yy - 64) ** 2 + (xx - cx) ** 2 <= 26**2
        image[disc] = (230, 200, 40)
        truth[disc & (truth == 0)] = k
    return image, truth


def test_touching_same_class_instances_come_back_separated(service):
    image, truth = touching_circles()
    with service.http() as c:
        answer = post(c, png_bytes(image)).json()
    ids = decode_panoptic_png(base64.b64decode(answer["mask"]["data"]))
    circles = [s for s in answer["segments"] if s["category_id"] == CIRCLE and s["isthing"]]
    assert len(circles) == 2, answer["segments"]
    for k in (1, 2):
        ious = [
            ((ids == s["id"]) & (truth == k)).sum() / ((ids == s["id"]) | (truth == k)).sum() for s in circles
        ]
        assert max(ious) > 0.7, ious
