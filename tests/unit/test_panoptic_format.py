"""COCO panoptic id PNGs: id = R + 256 G + 256^2 B, exact round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging.panoptic_format import MAX_ID, decode_panoptic_png, encode_panoptic_png, id2rgb, rgb2id


def test_id2rgb_known_values():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    assert id2rgb(ids).tolist() == [
        [[0, 0, 0], [1, 0, 0], [255, 0, 0]],
        [[0, 1, 0], [0, 0, 1], [255, 255, 255]],
    ]
    assert rgb2id(id2rgb(ids)).tolist() == ids.tolist()


@pytest.mark.parametrize("top", [5, 255, 65535, 65536, 1_000_001, MAX_ID])
def test_png_round_trip_is_exact(top):
    rng = np.random.default_rng(top)
    ids = rng.integers(0, top + 1, (17, 23)).astype(np.int64)
    ids[0, 0] = top  # ids above 65535 need the blue channel
    decoded = decode_panoptic_png(encode_panoptic_png(ids))
    assert decoded.dtype == np.int32 and np.array_equal(decoded, ids)


def test_png_is_rgb_as_panopticapi_reads_it():
    data = encode_panoptic_png(np.array([[70000, 0]], np.int32))
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        assert np.asarray(image)[0, 0].tolist() == [70000 % 256, (70000 // 256) % 256, 70000 // 65536]


@pytest.mark.parametrize("bad", [np.array([[-1]]), np.array([[MAX_ID + 1]]), np.array([[0.5]])])
def test_out_of_range_or_non_integer_ids_are_refused(bad):
    with pytest.raises(ValueError):
        id2rgb(bad)


def test_non_rgb_png_is_refused():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="RGB"):
        decode_panoptic_png(buffer.getvalue())
