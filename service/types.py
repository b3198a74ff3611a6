"""What crosses between the deployments and out of the service, independent of the protocol.

These are plain dataclasses of numpy arrays and numbers: Ray moves them between replicas (arrays
through the object store), and ``api/http.py`` and ``api/grpc.py`` turn them into JSON or protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from service.errors import InvalidArgument
from service.imaging.geometry import Geometry

if TYPE_CHECKING:  # pycocotools and OpenCV load only where instances are encoded
    from service.imaging.instance import Instances

MaskFormat = Literal["png", "rle", "polygons", "coco_panoptic", "raw"]
"""The mask payloads a caller may ask for; the gRPC enum ``MaskFormat`` names the same ones."""
MASK_FORMATS: tuple[str, ...] = get_args(MaskFormat)


@dataclass(frozen=True)
class SegmentOptions:
    """What the caller asked for; travels with the request through every deployment."""

    model: str
    format: MaskFormat = "png"
    overlay: bool = False
    request_id: str = ""
    deadline: float | None = None
    """Absolute ``time.time()`` by which the answer must be ready (None = no deadline)."""
    protocol: Literal["http", "grpc", "oip_http", "oip_grpc"] = "http"

    def __post_init__(self) -> None:
        if self.format not in MASK_FORMATS:
            raise InvalidArgument(f"unknown format {self.format!r}; use one of {', '.join(MASK_FORMATS)}")


@dataclass(frozen=True)
class ImageTensor:
    """An image that arrives as pixels, not as an encoded file (the Open Inference Protocol's tensors).

    ``pixels`` is either uint8 ``[H, W, 3]`` RGB, which the codec fits to the model's input policy as it
    does a decoded image, or float32 ``[H, W, 3]`` already normalized (the model's channel order, pixel
    range, mean and std applied): the network's input as it is (no resize, no pad; H and W multiples
    of the policy's ``size_divisor``).
    """

    pixels: np.ndarray

    @property
    def normalized(self) -> bool:
        return self.pixels.dtype == np.float32


ImageInput = bytes | ImageTensor
"""What a segmentation request carries: encoded image bytes, or pixels."""


def payload_bytes(body: ImageInput) -> int:
    """The size of a request's image payload: the encoded file's, or the pixels'."""
    return body.pixels.nbytes if isinstance(body, ImageTensor) else len(body)


@dataclass
class PreparedImage:
    """The codec's output: the model input and what is needed to undo the geometry."""

    pixels: np.ndarray
    """uint8 [Hp, Wp, 3], the model input after resize and pad; float32 [Hp, Wp, 3] for an already
    normalized ``ImageTensor`` (the runner then skips its normalization)."""
    geometry: Geometry
    options: SegmentOptions
    original: np.ndarray | None = None  # uint8 [H, W, 3], kept only when an overlay is asked for
    timings_ms: dict[str, float] = field(default_factory=dict)
    tiled: bool = False
    """A large image for the model's tile policy: ``pixels`` is the whole image at the tile scale
    (``geometry.scaled``, not padded), cut into tiles by the model's worker (``service/tiled.py``)."""


@dataclass
class Segmentation:
    """The segmenter's output at the original resolution.

    Semantic: ``labels`` uint8/uint16 [H, W] class ids. Panoptic: ``labels`` is the semantic map and
    ``panoptic`` int32 [H, W] segment ids (0 = void) with ``segments`` describing each id. Instance:
    ``labels`` is the instance id map (0 = background, k = the k-th instance by score) and
    ``instances`` the detections (``service.imaging.instance.Instances``).
    """

    labels: np.ndarray
    options: SegmentOptions
    original: np.ndarray | None
    timings_ms: dict[str, float]
    batch_size: int
    panoptic: np.ndarray | None = None
    segments: list[dict] = field(default_factory=list)
    instances: Instances | None = None


@dataclass
class ClassPresence:
    id: int
    name: str
    pixels: int


@dataclass
class SegmentResult:
    """The encoded answer, ready for a protocol adapter."""

    model: str
    task: str
    width: int
    height: int
    classes: list[ClassPresence]
    mask_format: str
    mask_png: bytes | None = None
    mask_raw: bytes | None = None
    mask_dtype: str = "uint8"
    panoptic_raw: bytes | None = None
    """Panoptic models, format ``raw``: the COCO segment id map, int32 row-major bytes."""
    rle: list[dict] | None = None
    polygons: list[dict] | None = None
    segments: list[dict] | None = None
    instances: list[dict] | None = None
    """Instance models: ``service.imaging.instance.describe_instances`` in score order."""
    overlay_png: bytes | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    request_id: str = ""
