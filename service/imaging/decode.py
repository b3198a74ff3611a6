"""Decode untrusted image bytes into RGB uint8 pixels, refusing what we should not try.

The order matters for safety:

1. ``Image.open`` only parses the header (it is lazy), so the format and the declared size are known
   before any pixel is decoded.
2. Formats outside ``SUPPORTED_FORMATS`` are refused before ``load()`` runs their decoder (that keeps
   e.g. EPS, which shells out to Ghostscript on load, and the long tail of rare plugins out of reach).
3. ``width * height > max_pixels`` is refused from the header, so a 100-byte PNG that declares
   100000x100000 costs nothing. Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is
   left at its default: it only ever refuses earlier, and its error is reported as the same 413.
4. Only then are the pixels of the first frame loaded (animated GIF / WebP / multi-page TIFF: frame 0),
   EXIF orientation applied, and the mode converted to RGB.

Mode conversion choices (``to_rgb``):

* alpha (RGBA, LA, PA, P with transparency) is dropped, not composited: transparent pixels keep the
  colour stored under them. The segmenter sees the stored colours, exactly what ``convert("RGB")`` gives.
* 16-bit grey (``I;16*``) keeps its high byte (``>> 8``), so an 8-bit picture stored as 16-bit
  (``v * 257``) decodes to exactly the 8-bit values; 48-bit PNG/TIFF are already reduced to 8 bits per
  channel by Pillow.
* 32-bit ``I`` and float ``F`` have no declared range: values already in [0, 255] (or [0, 1] for ``F``)
  are used as they are, 16-bit ranges are shifted, anything else is stretched min..max to 0..255.
* CMYK, YCbCr, 1 (bilevel), L, P, LAB, HSV: Pillow's ``convert("RGB")``.

Nothing here unpickles or imports Ray; only Pillow touches the bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

# Pillow format names (``Image.format``). MPO is what phones write: a JPEG with extra frames.
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
_FORMAT_ALIASES = {"MPO": "JPEG"}

_ACCEPTED_TYPES = "image/* or application/octet-stream"
_SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION_TAG = 0x0112

# Truncated files must be errors, never half-grey pictures. This is Pillow's default; we say it out
# loud so a stray ``LOAD_TRUNCATED_IMAGES = True`` elsewhere in the process is noticed in review.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# Types that say nothing about the body: curl sends x-www-form-urlencoded for --data-binary unless
# told otherwise, so it counts as "unspecified" rather than as a lie about the content.
_UNSPECIFIED_TYPES = frozenset({"", "application/octet-stream", "application/x-www-form-urlencoded"})


def check_content_type(content_type: str | None) -> None:
    """Accept a missing type, ``application/octet-stream`` or any ``image/*``; raise otherwise.

    Parameters (``; charset=...``) and case are ignored. The declared image subtype is not trusted:
    the real format is sniffed from the bytes, so ``image/jpeg`` on PNG bytes decodes fine.
    Raises ``UnsupportedMediaType`` (415) naming the type and what is accepted.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in _UNSPECIFIED_TYPES or media_type.startswith("image/"):
        return
    raise UnsupportedMediaType(
        f"content type {media_type!r} is not an image; send the raw image bytes as {_ACCEPTED_TYPES}"
    )


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode image bytes to RGB ``uint8 [H, W, 3]`` (C-contiguous, writable), EXIF-oriented.

    Raises ``InvalidImage`` (empty, not an image, truncated, corrupt, zero size),
    ``UnsupportedMediaType`` (an image format outside ``SUPPORTED_FORMATS``) and
    ``PayloadTooLarge`` (more than ``max_pixels`` pixels, checked before decoding).
    """
    image = _open_checked(data, max_pixels)
    with image:
        _load_first_frame(image, max_pixels)
        oriented = _apply_orientation(image)
        return to_rgb(oriented)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check format, size and pixel count before any decoding."""
    if not data:
        raise InvalidImage("empty body: expected the bytes of an image")
    image = _open(data)
    try:
        _check_format(image)
        _check_size(image.size, max_pixels)
    except BaseException:
        image.close()
        raise
    return image


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(
            f"not a recognised image ({len(data)} bytes); supported formats: {_supported()}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image is too large to decode: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # malformed headers raise all sorts of types inside Pillow's plugins
        raise InvalidImage(f"cannot read the image header: {_describe(exc)}") from None


def _check_format(image: Image.Image) -> None:
    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "unknown")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(f"image format {image.format} is not supported; supported: {_supported()}")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels"
        )


def _load_first_frame(image: Image.Image, max_pixels: int) -> None:
    """Decode the pixels of frame 0 (``Image.open`` leaves multi-frame files on it)."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image is too large to decode: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # OSError (truncated), SyntaxError (broken PNG), ValueError, EOFError, ...
        raise InvalidImage(f"corrupt or truncated {image.format} image: {_describe(exc)}") from None
    # A few decoders settle the size only on load: check again, cheaply.
    _check_size(image.size, max_pixels)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: treat as unrotated rather than refusing a decodable picture
        return 1


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip by the EXIF orientation tag; a malformed EXIF block is ignored, not fatal."""
    if _orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:
        return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to RGB ``uint8 [H, W, 3]``, C-contiguous and writable.

    See the module docstring for the choices (alpha dropped, 16-bit reduced by its high byte).
    """
    if image.mode in _SIXTEEN_BIT_GREY:
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return _grey_to_rgb(grey)
    if image.mode == "I":
        return _grey_to_rgb(_int_to_uint8(np.asarray(image)))
    if image.mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image)))
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when going to RGB directly with byte transparency
    try:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except ValueError:
        raise UnsupportedMediaType(
            f"pixel mode {image.mode} of this {image.format} image is not supported"
        ) from None
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> uint8 [H, W, 3] (C-contiguous copy)."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _int_to_uint8(values: np.ndarray) -> np.ndarray:
    """32-bit grey [H, W] -> uint8: 8-bit range as is, 16-bit range >> 8, otherwise min..max stretch."""
    values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return (values >> 8).astype(np.uint8)
    return _stretch(values.astype(np.float64), lo, hi)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """float grey [H, W] -> uint8: [0, 1] scaled by 255, [0, 255] as is, otherwise min..max stretch.

    NaN and infinities become 0.
    """
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0 and hi <= 1:
        return np.rint(values * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.rint(values).astype(np.uint8)
    return _stretch(values, lo, hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map lo..hi linearly to 0..255 (a flat image becomes 0)."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _supported() -> str:
    return ", ".join(sorted(SUPPORTED_FORMATS))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
