"""Answer checks: a segment answer is a success only when it is a 200 / OK carrying a decodable PNG
mask of the size of the image sent; anything else is a failure with a short, stable reason (no
request ids in it, so locust's failure table groups them)."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image

from loadtests.images import TestImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Checked:
    """The outcome of one answer: ``reason`` is None on success."""

    reason: str | None
    timings_ms: dict[str, float]
    batch_size: int = 0


def check_mask_png(data: bytes | None, width: int, height: int) -> str | None:
    """None when ``data`` is a PNG that decodes to ``width`` x ``height``, else why not."""
    if not data:
        return "no mask in the answer"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                return f"mask is {image.format}, not PNG"
            image.load()
            size = image.size
    except Exception as e:  # any decoding error is a failed check
        return f"mask PNG does not decode: {type(e).__name__}"
    if size != (width, height):
        return f"mask is {size[0]}x{size[1]}, expected {width}x{height}"
    return None


def check_http_answer(
    status: int, body: bytes, image: TestImage, model: str, verify_png: bool = True
) -> Checked:
    """A JSON answer of ``POST /v1/models/{model}/segment``."""
    if status != 200:
        return Checked(f"HTTP {status} {_error_code(body)}".strip(), {})
    try:
        answer = json.loads(body)
    except ValueError:
        return Checked("HTTP 200 with a body that is not JSON", {})
    timings = {k: float(v) for k, v in answer.get("timings_ms", {}).items()}
    batch = int(answer.get("batch_size", 0) or 0)
    return Checked(_json_reason(answer, image, model, verify_png), timings, batch)


def _json_reason(answer: dict[str, Any], image: TestImage, model: str, verify_png: bool) -> str | None:
    if answer.get("model") != model:
        return f"answer is for model {answer.get('model')!r}"
    if (answer.get("width"), answer.get("height")) != (image.width, image.height):
        return "answer width/height differ from the image"
    mask = answer.get("mask", {})
    if mask.get("media_type") != "image/png" or "data" not in mask:
        return "answer has no PNG mask"
    if not verify_png:
        return None
    try:
        png = base64.b64decode(mask["data"], validate=True)
    except (binascii.Error, ValueError):
        return "mask is not valid base64"
    return check_mask_png(png, image.width, image.height)


def check_png_answer(
    status: int, body: bytes, image: TestImage, batch_header: str | None = None, verify_png: bool = True
) -> Checked:
    """An ``Accept: image/png`` answer: the label-map PNG itself as the body (ours and the peers')."""
    if status != 200:
        return Checked(f"HTTP {status} {_error_code(body)}".strip(), {})
    batch = int(batch_header) if batch_header and batch_header.isdigit() else 0
    if verify_png:
        return Checked(check_mask_png(body, image.width, image.height), {}, batch)
    return Checked(None if body.startswith(PNG_SIGNATURE) else "body is not a PNG", {}, batch)


def check_grpc_answer(response: Any, image: TestImage, model: str, verify_png: bool = True) -> Checked:
    """A ``segmentation.v1.SegmentResponse`` that came back with status OK."""
    timings = {k: float(v) for k, v in response.timings_ms.items()}
    batch = int(response.batch_size)
    if response.HasField("error"):
        return Checked(f"frame error {response.error.code}", timings, batch)
    if response.model != model:
        return Checked(f"answer is for model {response.model!r}", timings, batch)
    if (response.width, response.height) != (image.width, image.height):
        return Checked("answer width/height differ from the image", timings, batch)
    if verify_png:
        reason = check_mask_png(response.mask_png, image.width, image.height)
    else:
        reason = None if response.mask_png else "no mask in the answer"
    return Checked(reason, timings, batch)


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except Exception:
        return ""
