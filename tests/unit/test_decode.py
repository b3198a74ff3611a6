"""decode_image / check_content_type: every input is built here with Pillow and numpy."""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.imaging.decode import SUPPORTED_FORMATS, check_content_type, decode_image, to_rgb
from tests.conftest import png_declaring

LIMIT = 10_000_000


def gradient(height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth RGB uint8 [H, W, 3] picture that lossy codecs keep close to the original."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 4 % 256], -1).astype(np.uint8)


def encode(image: Image.Image | np.ndarray, fmt: str, **params) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (height, width, 3)
    assert array.flags.c_contiguous and array.flags.writeable


# --- formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("GIF", {})],
)
def test_lossless_formats_round_trip(fmt: str, params: dict) -> None:
    picture = gradient()
    if fmt == "GIF":  # GIF is paletted: use a picture with few colours
        picture = (picture // 64 * 64).astype(np.uint8)
    out = decode_image(encode(picture, fmt, **params), max_pixels=LIMIT)
    check_rgb(out, 24, 32)
    np.testing.assert_array_equal(out, picture)


def test_jpeg_is_close() -> None:
    picture = gradient()
    out = decode_image(encode(picture, "JPEG", quality=95), max_pixels=LIMIT)
    check_rgb(out, 24, 32)
    assert np.abs(out.astype(int) - picture).mean() < 3


def test_mpo_is_read_as_jpeg() -> None:
    picture = gradient()
    data = encode(Image.fromarray(picture), "MPO", save_all=True, append_images=[Image.new("RGB", (32, 24))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = decode_image(data, max_pixels=LIMIT)
    assert np.abs(out.astype(int) - picture).mean() < 3  # the first frame, not the black one


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("PNG", {})]
)
def test_animated_and_multipage_give_the_first_frame(fmt: str, params: dict) -> None:
    red = Image.new("RGB", (6, 4), (255, 0, 0))
    blue = Image.new("RGB", (6, 4), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue], **params)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data, max_pixels=LIMIT)
    check_rgb(out, 4, 6)
    assert (out == [255, 0, 0]).all()


def test_exif_orientation_6_rotates_clockwise() -> None:
    stored = np.zeros((10, 20, 3), np.uint8)  # H=10, W=20 as stored
    stored[:3, :3] = (255, 0, 0)  # top-left corner red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, max_pixels=LIMIT)
    check_rgb(out, 20, 10)  # H and W swapped
    assert out[0, -1, 0] > 200 and out[0, -1, 2] < 60  # stored top-left is now top-right
    assert out[0, 0].max() < 60 and out[-1, -1].max() < 60


def test_tiny_image() -> None:
    out = decode_image(encode(np.array([[[1, 2, 3]]], np.uint8), "PNG"), max_pixels=1)
    check_rgb(out, 1, 1)
    assert out.tolist() == [[[1, 2, 3]]]


# --- modes -----------------------------------------------------------------------------------------


def test_grayscale_becomes_three_equal_channels() -> None:
    grey = gradient()[:, :, 0]
    out = decode_image(encode(grey, "PNG"), max_pixels=LIMIT)
    check_rgb(out, 24, 32)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_rgba_drops_alpha_keeping_stored_colours() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    out = decode_image(encode(rgba, "PNG"), max_pixels=LIMIT)
    assert (out == (10, 200, 30)).all()


@pytest.mark.parametrize("transparency", [1, bytes([255, 0, 128])])
def test_palette_with_transparency(transparency: int | bytes) -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    image.putdata([0, 1, 2, 1, 1, 1, 2, 2])
    data = encode(image, "PNG", transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns when P with byte transparency goes straight to RGB
        out = decode_image(data, max_pixels=LIMIT)
    assert out[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [255, 0, 0]]


def test_palette_without_transparency() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([9, 8, 7, 1, 2, 3])
    image.putdata([1, 0])
    assert decode_image(encode(image, "PNG"), max_pixels=LIMIT).tolist() == [[[1, 2, 3], [9, 8, 7]]]


def test_cmyk_jpeg() -> None:
    picture = gradient()
    data = encode(Image.fromarray(picture).convert("CMYK"), "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, max_pixels=LIMIT)
    check_rgb(out, 24, 32)
    assert np.abs(out.astype(int) - picture).mean() < 3


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_looks_like_its_8bit_version(fmt: str) -> None:
    grey8 = gradient()[:, :, 1]
    grey16 = grey8.astype(np.uint16) * 257  # full 16-bit range
    data = encode(grey16, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data, max_pixels=LIMIT)
    check_rgb(out, 24, 32)
    assert np.abs(out[:, :, 0].astype(int) - grey8).max() <= 1
    assert out[:, :, 0].max() == 255  # scaled, not clipped: an unclipped map would be all 255


def test_48bit_png() -> None:
    import cv2

    picture = gradient()
    bgr16 = picture[:, :, ::-1].astype(np.uint16) * 257
    ok, data = cv2.imencode(".png", bgr16)
    assert ok
    out = decode_image(data.tobytes(), max_pixels=LIMIT)
    assert np.abs(out.astype(int) - picture).max() <= 1


def test_int32_and_float_tiff() -> None:
    values = np.arange(12, dtype=np.int32).reshape(3, 4) * 5000  # 0..55000: a 16-bit range
    out = decode_image(encode(values, "TIFF"), max_pixels=LIMIT)
    np.testing.assert_array_equal(out[:, :, 0], values >> 8)
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = decode_image(encode(unit, "TIFF"), max_pixels=LIMIT)
    np.testing.assert_array_equal(out[:, :, 0], np.rint(unit * 255))
    wide = np.array([[-1.0, 3.0], [1000.0, 0.0]], np.float32)
    out = decode_image(encode(wide, "TIFF"), max_pixels=LIMIT)
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 255


def test_bilevel_and_ycbcr() -> None:
    bits = Image.new("1", (3, 2))
    bits.putpixel((1, 0), 1)
    out = decode_image(encode(bits, "PNG"), max_pixels=LIMIT)
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
    ycbcr = to_rgb(Image.new("YCbCr", (2, 2), (128, 128, 128)))
    check_rgb(ycbcr, 2, 2)
    assert np.abs(ycbcr.astype(int) - 128).max() <= 1


# --- errors ----------------------------------------------------------------------------------------


def test_empty_body() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", max_pixels=LIMIT)


def test_random_bytes() -> None:
    noise = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidImage):
        decode_image(noise, max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt: str) -> None:
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(noise, fmt)
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "PCX", "TGA"])
def test_identified_but_unsupported_format(fmt: str) -> None:
    assert fmt not in SUPPORTED_FORMATS
    with pytest.raises(UnsupportedMediaType, match=f"{fmt}.*PNG"):
        decode_image(encode(gradient(16, 16), fmt), max_pixels=LIMIT)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("side", [100_000, 5_000])
def test_huge_declared_size_is_refused_from_the_header(side: int, no_pixel_decoding: None) -> None:
    data = png_declaring(side, side)
    assert len(data) < 100
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=LIMIT)
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_is_inclusive() -> None:
    data = encode(gradient(10, 12), "PNG")
    check_rgb(decode_image(data, max_pixels=120), 10, 12)
    with pytest.raises(PayloadTooLarge, match="12x10"):
        decode_image(data, max_pixels=119)


def test_zero_size_is_invalid() -> None:
    with pytest.raises(InvalidImage):
        decode_image(png_declaring(0, 5), max_pixels=LIMIT)


# --- content types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/octet-stream",
        "image/jpeg",
        "image/png",
        "IMAGE/WEBP; charset=binary",
        "image/x-foo",
    ],
)
def test_accepted_content_types(content_type: str | None) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "text/html; charset=utf-8"])
def test_refused_content_types(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=content_type.split(";")[0]) as info:
        check_content_type(content_type)
    assert "image/*" in info.value.message


def test_lying_image_type_still_decodes() -> None:
    data = encode(gradient(), "PNG")
    check_content_type("image/jpeg")
    check_rgb(decode_image(data, max_pixels=LIMIT), 24, 32)


# --- robustness ------------------------------------------------------------------------------------

SEEDS = {fmt: encode(gradient(12, 16), fmt) for fmt in ("PNG", "JPEG", "GIF")}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_bytes_decode_or_raise_a_service_error(data: bytes) -> None:
    try:
        out = decode_image(data, max_pixels=LIMIT)
    except (InvalidImage, UnsupportedMediaType, PayloadTooLarge):
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
