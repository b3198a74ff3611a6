"""What callers pass as an image -> encoded bytes and a content type."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

ImageInput: TypeAlias = bytes | bytearray | memoryview | str | Path | np.ndarray

OCTET_STREAM = "application/octet-stream"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_content_type(data: bytes) -> str:
    """The image type from the first bytes; ``application/octet-stream`` when unknown.

    The service sniffs the real format itself, so this is a courtesy for proxies and logs.
    """
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    return OCTET_STREAM


def encode_array(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` (grey), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA) -> PNG bytes (lossless)."""
    if image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"image arrays must be [H, W], [H, W, 3] or [H, W, 4], got {list(image.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_bytes(image: ImageInput) -> tuple[bytes, str]:
    """Encoded bytes (read from a path, PNG-encoded from an array, or as given) and their media type."""
    if isinstance(image, np.ndarray):
        return encode_array(image), "image/png"
    if isinstance(image, str | Path):
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        raise TypeError(f"image must be bytes, a path or a numpy array, got {type(image).__name__}")
    return data, sniff_content_type(data)
