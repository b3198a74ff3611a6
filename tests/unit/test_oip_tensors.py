"""Open Inference Protocol tensors: raw bytes, JSON data and typed contents <-> numpy, and what each
malformed tensor gets (a 400 that names the tensor)."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from service.api.oip import model as oip_model
from service.api.oip import tensors
from service.api.oip.infer import (
    InferRequest,
    InputTensor,
    RequestedOutput,
    assemble,
    check_outputs,
    images_of,
)
from service.errors import InvalidArgument
from service.types import ImageTensor, SegmentResult


@pytest.mark.parametrize("datatype", list(tensors.NUMPY_TYPES))
def test_raw_round_trip_of_every_numeric_type(datatype):
    dtype = tensors.NUMPY_TYPES[datatype]
    values = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    raw = tensors.to_raw(values, datatype)
    assert len(raw) == values.size * dtype.itemsize
    back = tensors.from_raw("x", raw, datatype, (2, 3, 4))
    assert back.dtype == dtype and np.array_equal(back, values)
    assert tensors.datatype_of(values.dtype) == datatype


def test_raw_is_little_endian_row_major():
    raw = tensors.to_raw(np.array([[1, 2], [3, 258]], np.uint16), "UINT16")
    assert raw == bytes([1, 0, 2, 0, 3, 0, 2, 1])


def test_bytes_elements_are_length_prefixed():
    items = [b"", b"abc", bytes(range(256))]
    raw = tensors.to_raw(items, "BYTES")
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:11] == b"\x03\x00\x00\x00abc"
    assert tensors.from_raw("x", raw, "BYTES", (3,)) == items


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (b"\x05\x00\x00\x00ab", (1,), "runs past the data"),
        (b"\x01\x00", (1,), "inside an element's 4-byte length"),
        (b"\x01\x00\x00\x00a", (2,), "1 BYTES elements, but its shape holds 2"),
    ],
)
def test_malformed_bytes_data_is_a_400(raw, shape, message):
    with pytest.raises(InvalidArgument, match=message):
        tensors.from_raw("image", raw, "BYTES", shape)


def test_raw_data_of_the_wrong_size_is_a_400():
    with pytest.raises(
        InvalidArgument, match=r"'pixels': 11 bytes of data, but shape \[1, 2, 2, 3\] of UINT8 needs 12"
    ):
        tensors.from_raw("pixels", bytes(11), "UINT8", (1, 2, 2, 3))


def test_json_data_flat_or_nested():
    flat = tensors.from_json("x", [1, 2, 3, 4], "UINT8", (2, 2), False)
    nested = tensors.from_json("x", [[1, 2], [3, 4]], "UINT8", (2, 2), False)
    assert np.array_equal(flat, nested) and flat.dtype == np.uint8 and flat.shape == (2, 2)
    floats = tensors.from_json("x", [[0, 1.5]], "FP32", (1, 2), False)
    assert floats.dtype == np.float32 and floats.tolist() == [[0.0, 1.5]]


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        ([1.5, 2], "UINT8", "not UINT8"),
        ([256, 0], "UINT8", "out of UINT8's range"),
        ([-1, 0], "UINT16", "out of UINT16's range"),
        ([1, 2, 3], "UINT8", "3 elements, but shape"),
        ([[1], [2, 3]], "UINT8", "not a regular array"),
        ("abc", "UINT8", "must be a JSON array"),
        (["a", 1], "BYTES", "must be strings"),
    ],
)
def test_bad_json_data_is_a_400(data, datatype, message):
    with pytest.raises(InvalidArgument, match=message):
        tensors.from_json("x", data, datatype, (2,), False)


def test_json_bytes_are_utf8_or_base64():
    assert tensors.from_json("x", ["hé"], "BYTES", (1,), False) == ["hé".encode()]
    blob = bytes(range(10))
    assert tensors.from_json("x", [base64.b64encode(blob).decode()], "BYTES", (1,), True) == [blob]
    with pytest.raises(InvalidArgument, match="not valid base64"):
        tensors.from_json("x", ["***"], "BYTES", (1,), True)


def test_typed_contents():
    assert np.array_equal(tensors.from_contents("x", [1, 2, 3, 4], "UINT8", (2, 2)), [[1, 2], [3, 4]])
    with pytest.raises(InvalidArgument, match="out of UINT8's range"):
        tensors.from_contents("x", [300], "UINT8", (1,))
    with pytest.raises(InvalidArgument, match="2 elements, but shape"):
        tensors.from_contents("x", [1, 2], "INT32", (3,))
    assert tensors.to_contents(np.array([[1, 2]], np.int32), "INT32") == [1, 2]


@pytest.mark.parametrize(
    ("shape", "datatype", "message"),
    [
        ([1, -2], "UINT8", "non-negative integers"),
        ([1.5], "UINT8", "non-negative integers"),
        ("12", "UINT8", "list of integers"),
        ([1], "BF16", "unknown datatype 'BF16'"),
    ],
)
def test_bad_shapes_and_datatypes(shape, datatype, message):
    with pytest.raises(InvalidArgument, match=message):
        tensors.check_datatype("x", datatype)
        tensors.check_shape("x", shape)


# --- the model's inputs and outputs -----------------------------------------------------------------------


def request_with(name: str, datatype: str, values) -> InferRequest:
    shape = (len(values),) if isinstance(values, list) else values.shape
    return InferRequest(inputs=[InputTensor(name, datatype, tuple(shape), values)])


def test_each_input_kind_becomes_n_images(repository):
    spec = repository.get("unet-shapes")
    assert images_of(spec, request_with("image", "BYTES", [b"a", b"b"])) == [b"a", b"b"]
    column = InferRequest(inputs=[InputTensor("image", "BYTES", (2, 1), [b"a", b"b"])])  # Triton's [N, 1]
    assert images_of(spec, column) == [b"a", b"b"]
    with pytest.raises(InvalidArgument, match=r"'image' must have shape \[-1\]"):
        images_of(spec, InferRequest(inputs=[InputTensor("image", "BYTES", (1, 2), [b"a", b"b"])]))
    pixels = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    images = images_of(spec, request_with("pixels", "UINT8", pixels))
    assert [type(i) for i in images] == [ImageTensor, ImageTensor]
    assert np.array_equal(images[1].pixels, pixels[1]) and not images[1].normalized
    chw = np.random.default_rng(0).normal(size=(1, 3, 16, 32)).astype(np.float32)
    (image,) = images_of(spec, request_with("normalized", "FP32", chw))
    assert image.normalized and image.pixels.shape == (16, 32, 3)
    assert np.array_equal(image.pixels[..., 2], chw[0, 2]) and image.pixels.flags.c_contiguous


@pytest.mark.parametrize(
    ("name", "datatype", "values", "message"),
    [
        ("picture", "BYTES", [b"x"], "unknown input 'picture'"),
        ("pixels", "FP32", np.zeros((1, 4, 4, 3), np.float32), "must be UINT8, got FP32"),
        ("pixels", "UINT8", np.zeros((1, 4, 4, 4), np.uint8), r"must have shape \[-1, -1, -1, 3\]"),
        ("pixels", "UINT8", np.zeros((4, 4, 3), np.uint8), r"must have shape \[-1, -1, -1, 3\]"),
        ("normalized", "FP32", np.zeros((1, 4, 4, 3), np.float32), r"must have shape \[-1, 3, -1, -1\]"),
        ("pixels", "UINT8", np.zeros((1, 0, 4, 3), np.uint8), "any size above 0"),
        ("pixels", "UINT8", np.zeros((9, 4, 4, 3), np.uint8), "at most 8 images .* got 9"),
        ("normalized", "FP32", np.full((1, 3, 16, 16), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_bad_inputs_are_a_400(repository, name, datatype, values, message):
    with pytest.raises(InvalidArgument, match=message):
        images_of(repository.get("unet-shapes"), request_with(name, datatype, values))


def test_one_input_exactly(repository):
    two = InferRequest(inputs=[InputTensor("image", "BYTES", (1,), [b"x"])] * 2)
    with pytest.raises(InvalidArgument, match="exactly one input"):
        images_of(repository.get("unet-shapes"), two)


def test_outputs_by_task_and_by_request(repository):
    unet, panoptic = repository.get("unet-shapes"), repository.get("panoptic-shapes")
    assert [t.name for t in oip_model.outputs(unet)] == ["labels"]
    assert [(t.name, t.datatype) for t in oip_model.outputs(panoptic)] == [
        ("labels", "UINT8"),
        ("panoptic_ids", "INT32"),
        ("segments", "BYTES"),
    ]
    chosen = check_outputs(panoptic, InferRequest(outputs=[RequestedOutput("segments")]))
    assert [t.name for t, _ in chosen] == ["segments"]
    assert [t.name for t, _ in check_outputs(panoptic, InferRequest())] == [
        "labels",
        "panoptic_ids",
        "segments",
    ]
    with pytest.raises(InvalidArgument, match="unknown output 'mask'; model 'unet-shapes' has labels"):
        check_outputs(unet, InferRequest(outputs=[RequestedOutput("mask")]))
    with pytest.raises(InvalidArgument, match="classification extension"):
        check_outputs(unet, InferRequest(outputs=[RequestedOutput("labels", {"class_count": 3})]))


def raw_result(ids: np.ndarray, task: str = "instance", **fields) -> SegmentResult:
    h, w = ids.shape
    return SegmentResult(
        model="m", task=task, width=w, height=h, classes=[], mask_format="raw",
        mask_raw=ids.tobytes(), mask_dtype=str(ids.dtype), **fields,
    )  # fmt: skip


def test_instance_models_give_the_instance_id_map_and_the_instances_as_json():
    """An instance model's outputs: ``instance_ids`` (its declared type, whatever the answer's) and
    ``instances``, one JSON list per image."""
    from service.config import ModelSpec
    from tests.instance_entry import instance_entry

    spec = ModelSpec.model_validate(instance_entry())
    ids_spec, instances_spec = oip_model.outputs(spec)
    assert (ids_spec.name, ids_spec.datatype, instances_spec.name) == ("instance_ids", "UINT8", "instances")
    described = [
        {"id": 1, "category_id": 2, "name": "rectangle", "score": 0.9, "bbox": [1, 2, 3, 4], "area": 5}
    ]
    results = [
        raw_result(np.array([[0, 1], [1, 1]], np.uint8), instances=described),
        raw_result(np.zeros((2, 2), np.uint16), instances=[]),  # an answer's own dtype may differ
    ]
    ids = assemble(ids_spec, results)
    assert (
        ids.shape == [2, 2, 2] and ids.values.dtype == np.uint8 and ids.values[0].tolist() == [[0, 1], [1, 1]]
    )
    listed = assemble(instances_spec, results)
    assert listed.shape == [2] and [json.loads(v) for v in listed.values] == [described, []]
    wide = ModelSpec.model_validate(instance_entry(instance={"max_detections": 300}))
    assert oip_model.outputs(wide)[0].datatype == "UINT16"


def test_maps_of_different_sizes_cannot_share_a_tensor():
    spec = oip_model.TensorSpec("labels", "UINT8", oip_model.MAPS)
    results = [
        raw_result(np.zeros((2, 3), np.uint8), "semantic"),
        raw_result(np.zeros((3, 3), np.uint8), "semantic"),
    ]
    with pytest.raises(
        InvalidArgument, match=r"one size .* \['3x2', '3x3'\]: send them in separate requests"
    ):
        assemble(spec, results)


def test_the_timeout_parameter_is_in_microseconds():
    assert InferRequest(parameters={"timeout": 250_000}).timeout_s() == 0.25
    assert InferRequest().timeout_s() is None
    for bad in (0, -1, "10", 1.5, True):
        with pytest.raises(InvalidArgument, match="'timeout' must be a positive number of microseconds"):
            InferRequest(parameters={"timeout": bad}).timeout_s()
