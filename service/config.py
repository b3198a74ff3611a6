"""Typed, strict settings: the model repository and the application's limits.

Every model is ``extra="forbid"``: a misspelled key is an error at start-up that names the file and
the key, never a silent default (Ray Serve's own config silently drops unknown keys).
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(Strict):
    id: int = Field(ge=0, le=65535)
    name: str
    color: tuple[int, int, int]
    """RGB colour used in overlays and documented in ``GET /v1/models/{model}``."""
    isthing: bool = False
    """Panoptic only: countable objects get instance ids; stuff classes do not."""

    @field_validator("color")
    @classmethod
    def _color_in_range(cls, color: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in color):
            raise ValueError(f"colour components must be 0..255, got {color}")
        return color


class TilePolicy(Strict):
    """Large images at full resolution: cut into overlapping tiles that go through the model's batcher
    like any other input, their logits blended with ``blend`` weights and reduced to labels band by band
    (``service/imaging/tiling.py``; docs/operations.md, "Large images"). Semantic models only."""

    min_side: int = Field(2048, ge=16)
    """Images whose longer side, at ``scale``, is at least this many pixels are tiled; smaller ones take
    the input ``mode``'s path (letterbox, ...) exactly as without a tile section."""
    size: int = Field(256, ge=16, le=4096)
    """Tile side in model-input pixels, a multiple of ``input.size_divisor``. Tiles start on multiples of
    the divisor too, so a network that pools sees the same pixel grid as on the whole image."""
    overlap: float = Field(0.25, ge=0)
    """Overlap of neighbouring tiles: a fraction of ``size`` below 1, pixels from 1 up. The stride
    (``size`` - overlap) is rounded down to a multiple of ``input.size_divisor``."""
    margin: int = Field(0, ge=0)
    """Pixels along each tile's inner edges (those a neighbouring tile covers) whose outputs are dropped:
    where zero padding changes a network's answer. At most half the overlap (a little less when
    ``scale`` is not 1: resampling reads two neighbouring pixels)."""
    blend: Literal["gaussian", "constant"] = "gaussian"
    """How overlapping logits are averaged: weights peaking at the tile centre (``sigma``), or equal."""
    sigma: float = Field(0.125, gt=0, le=1)
    """gaussian: standard deviation as a fraction of the tile side (MONAI's ``sigma_scale``)."""
    scale: float = Field(1.0, gt=0, le=4)
    """1 keeps the native resolution (objects at the size the client sent them); another factor resizes
    the image first (0.5: half each side), for images finer than the model's training data. Labels always
    come back at the size sent."""
    memory_budget_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    """Bound on one request's blending buffers on the model's device: two bands of float32 logits,
    ``classes x (tile rows of two tile rows) x width``. Wider images are blended in column blocks whose
    border tiles run once per block."""
    tiles_per_request: int = Field(4, ge=1, le=256)
    """Tiles of one request queued or in a forward at once: its share of each batch, so small requests
    of other clients that queued meanwhile run in the next forward instead of after the whole image."""

    def overlap_pixels(self, divisor: int) -> int:
        """The overlap after the stride is rounded down to a multiple of ``divisor``."""
        asked = self.overlap * self.size if self.overlap < 1 else self.overlap
        stride = max(divisor, (self.size - math.ceil(asked)) // divisor * divisor)
        return self.size - stride


class InputPolicy(Strict):
    """How the codec turns an arbitrary image into the model's input, and back."""

    mode: Literal["letterbox", "resize", "pad", "shortest_edge"] = "letterbox"
    """letterbox: scale the longer side to ``size`` keeping the aspect ratio, then pad to a multiple of
    ``size_divisor``; resize: stretch to ``size`` x ``size``; pad: keep the pixels, pad only;
    shortest_edge: scale the shorter side to ``size`` unless the longer side would pass ``max_size``
    (torchvision's detection transform, ``min_size`` / ``max_size``), then pad."""
    size: int = Field(128, ge=16, le=8192)
    size_divisor: int = Field(16, ge=1)
    """The padded input is a multiple of this (smp encoders of depth 5 need 32)."""
    channels: Literal["RGB", "BGR"] = "RGB"
    """Channel order the network expects (images are decoded to RGB; BGR reverses them)."""
    pixel_range: Literal["0-1", "0-255"] = "0-1"
    """Scale of the pixel values before ``mean``/``std``: 0-1 (torchvision) or 0-255 (Caffe-style)."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """In the network's channel order and pixel range; ``(x - mean) / std`` is what the network sees."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_size: int | None = Field(None, ge=16, le=16384)
    """shortest_edge only: the cap on the longer side (None: no cap)."""
    max_pixels: int | None = Field(None, ge=1)
    """The largest image (width x height as sent) this model segments: larger ones get 413 from the
    image header, before any decoding, with a message naming this limit. None: only the app's
    ``limits.max_image_pixels``. For a tiled model, the largest image it tiles; for a model that
    resizes, the size past which its answers lose what the client sent (panoptic-shapes)."""
    tile: TilePolicy | None = None
    """Tile large images at full resolution instead of resizing them (semantic models)."""

    @model_validator(mode="after")
    def _check_max_size(self) -> InputPolicy:
        if self.max_size is not None and self.mode != "shortest_edge":
            raise ValueError(f"max_size is for mode shortest_edge (mode is {self.mode})")
        if self.tile is not None:
            _check_tile(self.tile, self.size_divisor)
        return self

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        return std


def _check_tile(tile: TilePolicy, divisor: int) -> None:
    if tile.size % divisor:
        raise ValueError(f"tile.size {tile.size} must be a multiple of size_divisor {divisor}")
    overlap = tile.overlap_pixels(divisor)
    # Every pixel must get a tile that does not drop it; resampling (scale != 1) reads two neighbours.
    needed = 2 * tile.margin + (0 if tile.scale == 1.0 else 2)
    if overlap < needed:
        raise ValueError(
            f"tile.margin {tile.margin} needs an overlap of at least {needed} px (2 x margin"
            f"{'' if tile.scale == 1.0 else ' + 2 when scale is not 1'}); the overlap is {overlap} px"
        )


class BatchingSpec(Strict):
    max_batch_size: int = Field(8, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.0, ge=0.0, le=1.0)
    """0 forms a batch from what queued while the previous batch ran, without waiting for more."""
    max_batch_pixels: int = Field(8 * 1024 * 1024, ge=1)
    """Pixel budget of one batch (sum of H*W of its inputs): bounds device memory per batch."""
    max_concurrent_batches: int = Field(1, ge=1, le=16)


class AutoscalingSpec(Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)


class DeploymentSpec(Strict):
    """Resources for one model. Split topology: its segmenter deployment's replicas and Ray Serve options.
    Fused topology (the models run in the ingress replicas): ``device``, ``precision``,
    ``borrow_idle_cores`` and the admission bound ``max_ongoing_requests`` + ``max_queued_requests`` per
    ingress replica apply; replicas, CPUs and threads are the ingress's."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSpec | None = None
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(0, ge=0)
    """Intra-op threads per replica; 0 = as many as the replica's ``num_cpus`` (at least 1)."""
    borrow_idle_cores: bool = False
    """Fused topology, CPU: when the machine's other replicas have no request in flight, a forward of
    10 ms or more runs on the cores they leave idle (``service/cores.py``: at most 8 threads). Off by
    default: float results then vary in their last digits with the thread count (a label map's argmax
    held on every test; an instance model's scores and mask edges would not be bit-reproducible)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """auto: fp16 autocast on CUDA, fp32 on CPU."""
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(-1, ge=-1)

    @property
    def threads(self) -> int:
        """The torch threads a replica runs with (``torch_threads``, else its whole ``num_cpus``)."""
        return self.torch_threads or max(1, int(self.num_cpus))


class PanopticSpec(Strict):
    """Panoptic-DeepLab post-processing (defaults as published, stuff area scaled to our images)."""

    center_threshold: float = 0.1
    nms_kernel: int = Field(7, ge=1)
    top_k: int = Field(200, ge=1)
    stuff_area: int = Field(64, ge=0)
    label_divisor: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> PanopticSpec:
        if self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be odd (a centred max-pool window), got {self.nms_kernel}")
        if self.top_k >= self.label_divisor:
            raise ValueError("top_k must be below label_divisor (instance ids are class * divisor + k)")
        return self


class InstanceSpec(Strict):
    """Instance post-processing: which detections are kept, and where a soft mask becomes a pixel."""

    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Detections scoring below this are dropped (torchvision's ``box_score_thresh``)."""
    nms_threshold: float = Field(0.5, gt=0.0, le=1.0)
    """Per-class box NMS IoU (``box_nms_thresh``)."""
    max_detections: int = Field(100, ge=1, le=65535)
    """At most this many instances per image, the highest scores (``box_detections_per_img``); the
    instance id PNG is 8-bit up to 255 instances, 16-bit beyond."""
    mask_threshold: float = Field(0.5, ge=0.0, lt=1.0)
    """A pixel belongs to an instance where its mask probability is above this."""


class OutputSpec(Strict):
    """What the network returns, as the entry declares it (the runner never guesses)."""

    key: str | None = None
    """The output holding the class scores when the network returns a dict (torchvision: ``out``; its
    ``aux`` head is ignored) or an ONNX model has several outputs; None: the network returns one tensor."""
    kind: Literal["logits", "probabilities"] = "logits"
    """Scores ``[N, C, H, W]`` at the input's size, C = the number of classes: logits (any real numbers)
    or probabilities (softmax already applied). Both give labels by argmax after resizing."""


# Architectures: registry names. Ours are bare; other families carry their library's prefix.
OWN_ARCHITECTURES = ("unet", "panoptic_unet", "null")
TORCHVISION_SEGMENTATION = (
    "torchvision.fcn_resnet50",
    "torchvision.fcn_resnet101",
    "torchvision.deeplabv3_resnet50",
    "torchvision.deeplabv3_resnet101",
    "torchvision.deeplabv3_mobilenet_v3_large",
    "torchvision.lraspp_mobilenet_v3_large",
)
SMP_ARCHITECTURES = tuple(
    f"smp.{name}"
    for name in (
        "Unet",
        "UnetPlusPlus",
        "FPN",
        "PSPNet",
        "DeepLabV3",
        "DeepLabV3Plus",
        "Linknet",
        "MAnet",
        "PAN",
        "UPerNet",
        "Segformer",
    )
)
INSTANCE_ARCHITECTURES = ("torchvision.maskrcnn_resnet50_fpn", "torchvision.maskrcnn_resnet50_fpn_v2")
# A Literal from the tuples: pydantic then names the allowed values when an entry has a typo.
Architecture = Literal[  # type: ignore[valid-type]
    OWN_ARCHITECTURES + TORCHVISION_SEGMENTATION + SMP_ARCHITECTURES + INSTANCE_ARCHITECTURES
]
# The weights file of each format: its suffix is checked against the format, never used to pick one.
WEIGHTS_SUFFIX = {"pytorch": ".safetensors", "torch_export": ".pt2", "onnx": ".onnx"}


class ModelSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    task: Literal["semantic", "panoptic", "instance"]
    format: Literal["pytorch", "torch_export", "onnx"] = "pytorch"
    """pytorch: ``architecture`` built here, its state dict from a safetensors file; torch_export: a
    ``torch.export`` program (.pt2); onnx: an ONNX model run by ONNX Runtime. Exported artefacts carry
    their own graph: they have no architecture."""
    architecture: Architecture | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the architecture's builder (checked when the model is built)."""
    weights: str | None = None
    """The format's file (see WEIGHTS_SUFFIX), relative to the model repository root; None only for the
    null model."""
    output: OutputSpec = OutputSpec()
    version: str = "1"
    description: str = ""
    classes: list[ClassSpec]
    input: InputPolicy = InputPolicy()
    batching: BatchingSpec = BatchingSpec()
    deployment: DeploymentSpec = DeploymentSpec()
    panoptic: PanopticSpec | None = None
    instance: InstanceSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        ids = [c.id for c in self.classes]
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        _check_format(self)
        if self.task == "panoptic" and self.panoptic is None:
            raise ValueError("a panoptic model needs a 'panoptic' section")
        if self.task == "panoptic" and (self.format != "pytorch" or self.output != OutputSpec()):
            raise ValueError("a panoptic model is a pytorch panoptic_unet (its outputs are a fixed dict)")
        _check_instance_task(self)
        if self.input.tile is not None and self.task != "semantic":
            raise ValueError(
                f"input.tile is for semantic models; a {self.task} model's instances would be cut at tile "
                "borders (ids would not be stitched): give it input.max_pixels, its largest image, instead"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.isthing)


def _check_instance_task(spec: ModelSpec) -> None:
    """An instance model: a detector architecture, an ``instance`` section, class 0 = background."""
    if (spec.task == "instance") != (spec.architecture in INSTANCE_ARCHITECTURES):
        raise ValueError(
            f"task instance goes with the architectures {', '.join(INSTANCE_ARCHITECTURES)} "
            f"(and they with it), got task {spec.task} and {spec.architecture}"
        )
    if (spec.task == "instance") != (spec.instance is not None):
        raise ValueError("an instance model needs an 'instance' section, and only instance models have one")
    if spec.task == "instance" and len(spec.classes) < 2:
        raise ValueError("an instance model needs class 0 (background) and at least one object class")


def _check_format(spec: ModelSpec) -> None:
    """The architecture, weights and output declarations that each format needs, and only those."""
    suffix = WEIGHTS_SUFFIX[spec.format]
    if spec.weights is not None and not spec.weights.endswith(suffix):
        raise ValueError(f"format {spec.format} needs a {suffix} weights file, got {spec.weights!r}")
    if spec.format != "pytorch":
        if spec.architecture is not None or spec.arguments:
            raise ValueError(f"format {spec.format} carries its own graph: give no architecture or arguments")
        if spec.weights is None:
            raise ValueError("weights is required")
        return
    if spec.architecture is None:
        raise ValueError("format pytorch needs an architecture")
    if spec.weights is None and spec.architecture != "null":
        raise ValueError("weights is required")
    if spec.architecture in TORCHVISION_SEGMENTATION and spec.output.key is None:
        raise ValueError(
            f"{spec.architecture} returns a dict ('out', and 'aux' when built with aux_loss): set output.key"
        )


class Repository(Strict):
    models: list[ModelSpec]
    root: Path = Field(exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Repository:
        names = [m.name for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate model names: {sorted(dupes)}")
        return self

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def weights_path(self, spec: ModelSpec) -> Path:
        """The weights file, refused when the configured path escapes the repository root."""
        if spec.weights is None:
            raise ValueError(f"model {spec.name!r} has no weights")
        root = self.root.resolve()
        path = (root / spec.weights).resolve()
        if not path.is_relative_to(root):
            raise ConfigError(f"model {spec.name!r}: weights path {spec.weights!r} escapes {root}")
        return path


class ConfigError(ValueError):
    """A configuration file is invalid; the message names the file and the offending key."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check the spelling)")
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_repository(path: str | Path) -> Repository:
    """Read and strictly validate ``repository.yaml``; weights paths are relative to its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'models' list")
    try:
        repo = Repository.model_validate({**raw, "root": path.parent})
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path))) from None
    for spec in repo.models:
        if spec.weights is not None:
            repo.weights_path(spec)  # path escape is a start-up error too
    return repo


class Limits(Strict):
    """Request limits enforced by the ingress and the codec (documented in docs/operations.md)."""

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Checked from the header before decoding, so a small file declaring a huge size is refused."""
    request_timeout_s: float = Field(30.0, gt=0)


class CodecSpec(Strict):
    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSpec | None = None
    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)


class IngressSpec(Strict):
    """The ingress deployment. In the fused topology its replicas also run every served model (decode,
    batched forward, encode), so this is where a CPU node's replicas and cores are set."""

    num_replicas: int = Field(1, ge=1)
    autoscaling: AutoscalingSpec | None = None
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    """Fused topology only: a GPU for the models this replica runs."""
    torch_threads: int = Field(0, ge=0)
    """Fused topology: intra-op threads of the models; 0 = as many as ``num_cpus`` (at least 1)."""
    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int = Field(-1, ge=-1)

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus))


class AppSettings(Strict):
    """The ``args`` of ``service.app:build_app`` (``deploy/serve_config.yaml``)."""

    repository: str = "models/repository.yaml"
    models: list[str] | None = None
    """Serve only these models from the repository (default: all)."""
    limits: Limits = Limits()
    topology: Literal["auto", "split", "fused"] = "auto"
    """Where the work runs. fused: every ingress replica decodes, runs the served models and encodes
    itself, so a request never crosses a deployment (what a CPU node wants; each model's
    ``deployment`` section then only gives its device and precision, the replicas are ``ingress``'s).
    split: an ImageCodec deployment (``codec`` below) and one Segmenter deployment per model, each
    scaled by its ``deployment`` section, so GPU replicas do tensor work only. auto: fused when every
    served model runs on CPU, else split."""
    codec: CodecSpec = CodecSpec()
    """The split topology's ImageCodec deployment (unused when fused)."""
    ingress: IngressSpec = IngressSpec()
    """The entry deployment; in the fused topology it runs the models too."""
    api_keys_env: str | None = None
    """Name of an env var holding comma-separated API keys; unset = no authentication."""
    api_keys_file: str | None = None
    """A mounted file with one API key per line (e.g. a Kubernetes Secret)."""


def parse_app_settings(args: dict[str, Any] | None) -> AppSettings:
    try:
        return AppSettings.model_validate(args or {})
    except ValidationError as e:
        raise ConfigError(_describe(e, "application args")) from None


def file_digest(path: Path) -> str:
    """Short sha256 of a file: the weights version label in metrics and model metadata. Read once per
    process (weights do not change under a running replica)."""
    return _digest(str(Path(path).resolve()))


@functools.lru_cache(maxsize=64)
def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]
