"""An instance model's answer, from hand-built detections to JSON, protobuf and the client's result.

What each format means for an instance model: png = instance id PNG, raw = the id map's bytes,
rle = exact per-instance COCO RLE, polygons = per-instance polygons; coco_panoptic is refused.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from segserve_client.grpc import model_to_dict, result_from_pb
from segserve_client.http import result_from_json

from service.api.core import model_info
from service.api.grpc_convert import model_to_pb, result_to_pb
from service.api.http import result_json
from service.config import Limits
from service.errors import InvalidArgument
from service.imaging.encode import decode_label_png, decode_rle, encode_polygons
from service.imaging.instance import full_mask, instance_id_map, make_instances
from service.imaging.overlay import blend_overlay, palette
from service.pipeline import encode_result, prepare_image
from service.types import Segmentation, SegmentOptions
from tests.conftest import png_bytes
from tests.instance_entry import instance_spec

H, W = 30, 40


@pytest.fixture(scope="module")
def spec():
    return instance_spec()


@pytest.fixture(scope="module")
def picture():
    return (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def instances():
    """A rectangle (class 2) overlapping a blob (class 1) of lower score, and a far class-1 dot."""
    rect = np.ones((8, 12), bool)
    blob = np.zeros((10, 10), bool)
    blob[2:9, 1:8] = True
    dot = np.ones((2, 2), bool)
    return make_instances(
        H,
        W,
        class_ids=[1, 2, 1],
        scores=[0.7, 0.95, 0.3],
        boxes=[[10, 8, 20, 18], [5, 6, 17, 14], [35, 1, 37, 3]],
        masks=[blob, rect, dot],
        origins=[(10, 8), (5, 6), (35, 1)],
    )


def segmentation(instances, fmt: str, picture=None, spec_name: str = "maskrcnn-tiny") -> Segmentation:
    options = SegmentOptions(model=spec_name, format=fmt, overlay=picture is not None, request_id="r-1")
    return Segmentation(
        labels=instance_id_map(instances),
        options=options,
        original=picture,
        timings_ms={"forward": 1.0},
        batch_size=2,
        instances=instances,
    )


def test_png_is_the_instance_id_map_and_instances_come_without_masks(spec, instances):
    result = encode_result(segmentation(instances, "png"), spec)
    ids = decode_label_png(result.mask_png)
    np.testing.assert_array_equal(ids, instance_id_map(instances))
    assert (result.task, result.width, result.height, result.batch_size) == ("instance", W, H, 2)
    assert [(i["id"], i["category_id"], i["name"]) for i in result.instances] == [
        (1, 2, "rectangle"),
        (2, 1, "circle"),
        (3, 1, "circle"),
    ]
    assert all("rle" not in i and "polygons" not in i for i in result.instances)
    # Classes count the pixels each class owns in the id map (the rectangle wins the overlap).
    pixels = {c.name: c.pixels for c in result.classes}
    assert pixels == {
        "background": int((ids == 0).sum()),
        "rectangle": 96,
        "circle": int(((ids == 2) | (ids == 3)).sum()),
    }
    assert result.rle is None and result.polygons is None and result.segments is None


def test_raw_is_the_id_map_bytes(spec, instances):
    result = encode_result(segmentation(instances, "raw"), spec)
    ids = np.frombuffer(result.mask_raw, dtype=result.mask_dtype).reshape(H, W)
    np.testing.assert_array_equal(ids, instance_id_map(instances))
    assert result.mask_png is None


def test_rle_gives_each_instance_its_exact_mask_overlaps_included(spec, instances):
    result = encode_result(segmentation(instances, "rle"), spec)
    assert result.mask_png is None and result.mask_raw is None
    for k, item in enumerate(result.instances):
        mask = decode_rle(item["rle"])
        np.testing.assert_array_equal(mask, full_mask(instances, k))
        assert item["area"] == mask.sum()
    # The blob keeps the pixels the rectangle covers in the id map.
    assert (decode_rle(result.instances[1]["rle"]) & decode_rle(result.instances[0]["rle"])).any()


def test_polygons_are_per_instance(spec, instances):
    result = encode_result(segmentation(instances, "polygons"), spec)
    for k, item in enumerate(result.instances):
        assert item["polygons"] == encode_polygons(full_mask(instances, k))


def test_the_overlay_colours_instances_and_leaves_the_background(spec, instances, picture):
    result = encode_result(segmentation(instances, "png", picture), spec)
    overlay = np.asarray(Image.open(io.BytesIO(result.overlay_png)))
    ids = instance_id_map(instances)
    np.testing.assert_array_equal(overlay[ids == 0], picture[ids == 0])
    assert np.any(overlay[ids == 1] != picture[ids == 1])
    # Coloured per instance id (as panoptic segments are), not per class: two circles differ.
    np.testing.assert_array_equal(overlay, blend_overlay(picture, ids, palette([(0, 0, 0)])))


def test_coco_panoptic_is_refused_before_decoding_with_the_reason(spec, picture):
    options = SegmentOptions(model=spec.name, format="coco_panoptic")
    with pytest.raises(InvalidArgument, match="instance model") as e:
        prepare_image(png_bytes(picture), "image/png", options, spec, Limits())
    assert e.value.http_status == 400 and "rle" in e.value.message
    with pytest.raises(InvalidArgument):  # refused even for bytes that are not an image
        prepare_image(b"not an image", None, options, spec, Limits())


@pytest.mark.parametrize("fmt", ["png", "rle", "polygons", "raw"])
def test_json_protobuf_and_both_clients_carry_the_same_instances(spec, instances, fmt):
    result = encode_result(segmentation(instances, fmt), spec)
    body = result_json(result)
    assert body["instances"] == result.instances
    over_http = result_from_json(body)
    over_grpc = result_from_pb(result_to_pb(result))
    assert over_http.instances == result.instances
    assert over_grpc.instances == result.instances  # float32 scores and boxes survive protobuf floats
    assert over_grpc.task == over_http.task == "instance"
    if fmt in ("png", "raw"):
        np.testing.assert_array_equal(over_http.labels, instance_id_map(instances))
        np.testing.assert_array_equal(over_grpc.labels, instance_id_map(instances))
    if fmt == "png":
        assert base64.b64decode(body["mask"]["data"]) == result.mask_png


def test_model_info_says_task_thresholds_and_input_policy_over_both_protocols(spec):
    info = model_info(spec, "digest")
    assert info["task"] == "instance"
    assert info["architecture"] == "torchvision.maskrcnn_resnet50_fpn"
    assert info["instance"] == {
        "score_threshold": 0.0,
        "nms_threshold": 0.5,
        "max_detections": 5,
        "mask_threshold": 0.5,
    }
    assert info["input"]["mode"] == "shortest_edge" and info["input"]["max_size"] == 128
    assert model_to_dict(model_to_pb(info)) == info
    odd = model_info(instance_spec(instance={"score_threshold": 0.05, "nms_threshold": 0.7}), "d")
    assert model_to_dict(model_to_pb(odd)) == odd
