"""The client's own mask decoders (numpy and Pillow only) against the service's encoders and pycocotools."""

from __future__ import annotations

import io

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image
from segserve_client.decode import decode_label_png, encode_label_png, labels_from_rles
from segserve_client.rle import decode_rle, runs_from_string

from service.imaging import encode as service_encode

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coco_rle(mask: np.ndarray) -> dict:
    """pycocotools' compressed RLE of ``mask``, counts as ``str`` (as the service sends it)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@settings(max_examples=300, deadline=None)
@given(arrays(np.bool_, array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_rle_decodes_what_pycocotools_encodes(mask):
    rle = coco_rle(mask)
    decoded = decode_rle(rle)
    assert decoded.dtype == np.bool_ and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(decoded, mask_utils.decode(rle | {"counts": rle["counts"].encode()}) == 1)


def test_rle_long_runs_that_shrink_and_grow():
    """Runs of millions of pixels (several 5-bit groups each) whose differences are negative too."""
    mask = np.zeros((2400, 3000), bool)
    mask[100:2300, 50:900] = True  # long runs
    mask[5:7, 1000:2900] = True  # short runs right after long ones: negative differences
    mask[::97, 2950:] = True
    rle = coco_rle(mask)
    assert len(rle["counts"]) > 1000
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle(rle | {"counts": rle["counts"].encode()}), mask)


def test_rle_edge_masks_and_uncompressed_counts():
    for mask in (np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(5, dtype=bool)):
        np.testing.assert_array_equal(decode_rle(coco_rle(mask)), mask)
    # Uncompressed COCO RLE (crowd annotations): run lengths, column-major, zeros first.
    mask = np.array([[0, 1], [1, 1]], bool)
    np.testing.assert_array_equal(decode_rle({"size": [2, 2], "counts": [1, 3]}), mask)
    np.testing.assert_array_equal(
        decode_rle({"size": [2, 2], "counts": [1, 3]}),
        mask_utils.decode(mask_utils.frPyObjects({"size": [2, 2], "counts": [1, 3]}, 2, 2)) == 1,
    )
    assert runs_from_string("5220003").tolist() == [5, 2, 2, 2, 2, 2, 5]  # the service's hand-built case


@pytest.mark.parametrize(
    "counts",
    [
        "52/0",  # "/" is below the alphabet
        "52~",  # "~" is above it
        "5P",  # the last value's continuation bit is set: truncated
        "52",  # runs add up to 7, not 12
        [5, 2],
        [13, -1],
    ],
)
def test_malformed_rle_is_refused(counts):
    with pytest.raises(ValueError):
        decode_rle({"size": [3, 4], "counts": counts})


def test_class_rles_from_the_service_rebuild_the_label_map():
    labels = np.random.default_rng(3).integers(0, 7, (61, 47)).astype(np.uint8)
    labels[labels == 4] = 0  # an absent class
    rles = service_encode.encode_class_rles(labels)
    np.testing.assert_array_equal(labels_from_rles(rles, 61, 47), labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_png_round_trips_with_the_services_codec(dtype):
    top = 256 if dtype == np.uint8 else 65536
    labels = np.random.default_rng(1).integers(0, top, (33, 70)).astype(dtype)
    from_service = decode_label_png(service_encode.encode_label_png(labels))
    assert from_service.dtype == dtype
    np.testing.assert_array_equal(from_service, labels)
    np.testing.assert_array_equal(service_encode.decode_label_png(encode_label_png(labels)), labels)


def test_label_png_encoder_picks_the_smallest_depth_and_refuses_what_no_png_holds():
    small = np.array([[0, 3], [255, 1]], np.int64)
    assert decode_label_png(encode_label_png(small)).dtype == np.uint8
    assert decode_label_png(encode_label_png(small + 1)).dtype == np.uint16
    for bad in (np.array([[-1, 0]]), np.array([[70000]]), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2))):
        with pytest.raises(ValueError):
            encode_label_png(bad)
    gif = io.BytesIO()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="expected a PNG"):
        decode_label_png(gif.getvalue())
    with pytest.raises(ValueError, match="not a label map"):
        decode_label_png(service_encode.encode_rgb_png(np.zeros((2, 2, 3), np.uint8)))
