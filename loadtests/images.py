"""The seeded test images and the locust workload's weighted picks.

Images: a seeded set per size, made of the three real photographs that ship with scikit-image
(astronaut, coffee, chelsea; resized, sent as JPEG) and synthetic "shapes" images
(``service.training.shapes.make_sample``, sent as PNG). The same seed gives the same bytes.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from loadtests.client import encode_array
from loadtests.common import parse_size, parse_weighted

REAL_IMAGES = ("astronaut", "coffee", "chelsea")


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


def make_images(
    size: tuple[int, int], seed: int = 0, synthetic: int = 3, real: bool = True
) -> list[TestImage]:
    """The seeded image set for one (width, height): the real photographs resized (JPEG) and
    ``synthetic`` shapes images (PNG)."""
    from service.training.shapes import make_sample

    width, height = size
    images: list[TestImage] = []
    for name in REAL_IMAGES if real else ():
        resized = Image.fromarray(real_image(name)).resize((width, height), Image.Resampling.BILINEAR)
        images.append(TestImage(name, jpeg(np.asarray(resized)), "image/jpeg", width, height))
    rng = np.random.default_rng(seed)
    for i in range(synthetic):
        pixels = make_sample(int(rng.integers(1 << 31)), (height, width)).image
        images.append(TestImage(f"shapes-{i}", encode_array(pixels), "image/png", width, height))
    return images


def describe(images: Sequence[TestImage]) -> list[dict[str, Any]]:
    """The images as the report lists them."""
    return [
        {"name": i.name, "size": i.size_label, "bytes": len(i.data), "content_type": i.content_type}
        for i in images
    ]


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


def shapes_mosaic(height: int, width: int, seed: int = 0, cell: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A large "photo full of shapes" at the shapes models' training scale: seeded ``cell`` x ``cell``
    shapes samples side by side (each with its own background; shapes of radius ~11-26 px, as the
    models saw them), cut to ``height`` x ``width``. Returns the image uint8 [H, W, 3] and its ground
    truth uint8 [H, W] class ids."""
    from service.training.shapes import make_sample

    rows, cols = -(-height // cell), -(-width // cell)
    image = np.empty((rows * cell, cols * cell, 3), np.uint8)
    truth = np.empty((rows * cell, cols * cell), np.uint8)
    rng = np.random.default_rng(seed)
    for r in range(rows):
        for c in range(cols):
            sample = make_sample(int(rng.integers(1 << 31)), (cell, cell))
            image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = sample.image
            truth[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = sample.semantic
    return np.ascontiguousarray(image[:height, :width]), np.ascontiguousarray(truth[:height, :width])


def shapes_scene(height: int, width: int, seed: int = 0, cell: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A large picture full of shapes at the shapes models' training scale, on one continuous background
    (a mosaic of samples would add straight seams between backgrounds, which the models read as
    rectangle edges): the background of a shapes sample of the whole size, drawn without shapes; on it,
    for every ``cell`` x ``cell`` square, the shapes of a seeded ``cell``-sized sample (radius ~11-26 px
    at the default 128, as in training) that lie wholly inside it, with their fill, noise and edges.
    Returns the image uint8 [H, W, 3] and its ground truth uint8 [H, W] class ids."""
    from service.training.shapes import ShapesConfig, make_sample

    rng = np.random.default_rng(seed)
    image = make_sample(
        int(rng.integers(1 << 31)), (height, width), ShapesConfig(min_shapes=0, max_shapes=0)
    ).image
    truth = np.zeros((height, width), np.uint8)
    for top in range(0, height - cell + 1, cell):
        for left in range(0, width - cell + 1, cell):
            sample = make_sample(int(rng.integers(1 << 31)), (cell, cell))
            ids = sample.instances
            border = set(np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))) | {0}
            keep = ~np.isin(ids, list(border))
            window = (slice(top, top + cell), slice(left, left + cell))
            image[window][keep] = sample.image[keep]
            truth[window][keep] = sample.semantic[keep]
    return image, truth
