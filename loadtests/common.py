"""What the locust users and the benchmark share: paths, model lists, seeded test images, answer checks.

Nothing here imports gevent, locust or Ray, so the benchmark (asyncio) and the locustfile (gevent)
can both use it.

Images: a seeded set per size, made of the three real photographs that ship with scikit-image
(astronaut, coffee, chelsea; resized, sent as JPEG) and synthetic "shapes" images
(``service.training.shapes.make_sample``, sent as PNG). The same seed gives the same bytes.

Answer checks: a segment answer is a success only when it is a 200 / OK carrying a decodable PNG
mask of the size of the image sent; anything else is a failure with a short, stable reason (no
request ids in it, so locust's failure table groups them).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from segserve_client.images import encode_array

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "models" / "repository.yaml"
RESULTS_DIR = ROOT / "loadtests" / "results"
TMP_DIR = RESULTS_DIR / "tmp"  # gitignored: smoke runs, locust CSVs, the benchmark's temporary repository

REAL_IMAGES = ("astronaut", "coffee", "chelsea")
DEFAULT_IMAGE_SIZES = "128x128:3,256x256:3,512x384:2,1024x768:1"
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess", "encode", "total")


# --- parsing ----------------------------------------------------------------------------------------


def parse_weighted(text: str) -> list[tuple[str, float]]:
    """``"a:3,b,c:0.5"`` -> ``[("a", 3.0), ("b", 1.0), ("c", 0.5)]``; weights must be > 0."""
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.partition(":")
        value = float(weight) if sep else 1.0
        if value <= 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight!r}")
        out.append((name.strip(), value))
    return out


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)`` as (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep:
        raise ValueError(f"image size must be WIDTHxHEIGHT, got {text!r}")
    width, height = int(w), int(h)
    if width < 8 or height < 8:
        raise ValueError(f"image size {text!r} is too small")
    return width, height


def parse_int_list(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]``; ``"1-4"`` -> ``[1, 2, 3, 4]``."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
    if not out or min(out) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- models -----------------------------------------------------------------------------------------


def servable_models(repository_path: str | Path = DEFAULT_REPOSITORY) -> tuple[list[str], dict[str, str]]:
    """Models of the repository that can be loaded (weights present, or the null model), and the
    ones skipped with the reason."""
    from service.config import load_repository

    repository = load_repository(repository_path)
    ok: list[str] = []
    skipped: dict[str, str] = {}
    for spec in repository.models:
        if spec.weights is None:
            ok.append(spec.name)
            continue
        path = repository.weights_path(spec)
        if path.is_file():
            ok.append(spec.name)
        else:
            skipped[spec.name] = f"weights missing: {path}"
    return ok, skipped


def select_models(
    requested: Sequence[str] | None, available: Sequence[str], skipped: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The requested models that are available (all available ones when none are requested).

    Returns the selection and the requested-but-unavailable ones with a reason.
    """
    skipped = dict(skipped or {})
    if not requested:
        return list(available), skipped
    chosen = [m for m in requested if m in available]
    dropped = {m: skipped.get(m, "not served") for m in requested if m not in available}
    return chosen, dropped


# --- images -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestImage:
    """One encoded image to send and what the answer must look like."""

    __test__ = False  # not a pytest test class

    name: str
    data: bytes
    content_type: str
    width: int
    height: int

    @property
    def size_label(self) -> str:
        return f"{self.width}x{self.height}"


_REAL_CACHE: dict[str, np.ndarray] = {}


def real_image(name: str) -> np.ndarray:
    """A photograph bundled with scikit-image (no download), uint8 RGB."""
    if name not in _REAL_CACHE:
        import skimage.data

        _REAL_CACHE[name] = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    return _REAL_CACHE[name]


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats to ``digits`` places, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def make_images(
    size: tuple[int, int], seed: int = 0, synthetic: int = 3, real: bool = True
) -> list[TestImage]:
    """The seeded image set for one (width, height): the real photographs resized (JPEG) and
    ``synthetic`` shapes images (PNG)."""
    from service.training.shapes import make_sample

    width, height = size
    images: list[TestImage] = []
    if real:
        for name in REAL_IMAGES:
            resized = np.asarray(
                Image.fromarray(real_image(name)).resize((width, height), Image.Resampling.BILINEAR)
            )
            images.append(TestImage(name, jpeg(resized), "image/jpeg", width, height))
    rng = np.random.default_rng(seed)
    for i in range(synthetic):
        sample_seed = int(rng.integers(1 << 31))
        pixels = make_sample(sample_seed, (height, width)).image
        images.append(TestImage(f"shapes-{i}", encode_array(pixels), "image/png", width, height))
    return images


class WeightedChoice:
    """Seeded weighted picks from a fixed list (``random.Random`` so each user has its own stream)."""

    def __init__(self, items: Sequence[Any], weights: Sequence[float]) -> None:
        if not items or len(items) != len(weights):
            raise ValueError("need one weight per item and at least one item")
        self.items = list(items)
        self.weights = list(weights)

    def pick(self, rng: random.Random) -> Any:
        return rng.choices(self.items, weights=self.weights, k=1)[0]


class Workload:
    """A weighted mix of models and image sizes; within a size, images are picked uniformly."""

    def __init__(
        self, models: Sequence[tuple[str, float]], images: dict[str, list[TestImage]], size_weights: dict
    ) -> None:
        self.models = WeightedChoice([m for m, _ in models], [w for _, w in models])
        labels = [label for label in images if images[label]]
        self.sizes = WeightedChoice(labels, [size_weights[label] for label in labels])
        self.images = images

    @classmethod
    def build(
        cls, models: Sequence[tuple[str, float]], sizes: str, seed: int = 0, synthetic: int = 3
    ) -> Workload:
        images: dict[str, list[TestImage]] = {}
        weights: dict[str, float] = {}
        for k, (label, weight) in enumerate(parse_weighted(sizes)):
            size = parse_size(label)
            key = f"{size[0]}x{size[1]}"
            images[key] = make_images(size, seed=seed * 7919 + k, synthetic=synthetic)
            weights[key] = weight
        return cls(models, images, weights)

    def pick(self, rng: random.Random) -> tuple[str, TestImage]:
        model = self.models.pick(rng)
        images = self.images[self.sizes.pick(rng)]
        return model, images[rng.randrange(len(images))]


# --- checks -----------------------------------------------------------------------------------------


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


@dataclass
class Checked:
    """The outcome of one answer: ``reason`` is None on success."""

    reason: str | None
    timings_ms: dict[str, float]
    batch_size: int = 0


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
    if answer.get("model") != model:
        return Checked(f"answer is for model {answer.get('model')!r}", timings, batch)
    if (answer.get("width"), answer.get("height")) != (image.width, image.height):
        return Checked("answer width/height differ from the image", timings, batch)
    mask = answer.get("mask", {})
    if mask.get("media_type") != "image/png" or "data" not in mask:
        return Checked("answer has no PNG mask", timings, batch)
    if verify_png:
        try:
            png = base64.b64decode(mask["data"], validate=True)
        except (binascii.Error, ValueError):
            return Checked("mask is not valid base64", timings, batch)
        reason = check_mask_png(png, image.width, image.height)
        if reason:
            return Checked(reason, timings, batch)
    return Checked(None, timings, batch)


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
