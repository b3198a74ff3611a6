"""What the client returns: ``SegmentationResult``, the same for HTTP and gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from segserve_client.errors import ClientError


class ClassCount(NamedTuple):
    """A class present in the label map and its pixel count (a plain ``(id, name, pixels)`` tuple)."""

    id: int
    name: str
    pixels: int


@dataclass
class SegmentationResult:
    """One image's segmentation, decoded.

    ``labels``: class ids ``[H, W]`` (uint8, or uint16 past 255 classes) at the original resolution,
    decoded from the PNG mask, the raw bytes or the per-class RLE; ``None`` for ``format="polygons"``
    (lossy, kept as ``polygons``) and for a failed stream frame. For panoptic models asked for PNG the
    service sends the COCO id PNG, so ``labels`` is rebuilt from ``panoptic`` and ``segments``
    (``category_id`` per segment id; void pixels get ``VOID_LABEL``); ask for ``format="raw"`` to get
    the service's semantic map itself.
    ``panoptic``: int32 ``[H, W]`` segment ids (``R + 256 G + 256² B`` of the COCO id PNG, 0 = void)
    for panoptic models, else ``None``. ``segments``: COCO panoptic segment dicts (id, category_id,
    isthing, area, bbox, score, rle). ``mask_png``: the PNG bytes as the service sent them (what
    ``--out`` writes). ``error``: set, with everything else empty, when a stream frame failed.
    Instance models (``task == "instance"``): ``instances`` lists the detections in score order
    (id, category_id, name, score, bbox ``[x, y, w, h]``, area, and ``rle`` or ``polygons`` for those
    formats), and ``labels`` is the instance id map (0 = background, k = ``instances[k - 1]``).
    """

    model: str
    task: str
    width: int
    height: int
    labels: np.ndarray | None
    classes: list[ClassCount] = field(default_factory=list)
    panoptic: np.ndarray | None = None
    segments: list[dict] = field(default_factory=list)
    instances: list[dict] = field(default_factory=list)
    overlay_png: bytes | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    request_id: str = ""
    format: str = "png"
    mask_png: bytes | None = None
    rle: list[dict] | None = None
    polygons: list[dict] | None = None
    frame_id: str = ""
    error: ClientError | None = None

    @classmethod
    def failed(cls, model: str, frame_id: str, error: ClientError) -> SegmentationResult:
        return cls(
            model=model,
            task="",
            width=0,
            height=0,
            labels=None,
            frame_id=frame_id,
            error=error,
            request_id=error.request_id or "",
        )

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> SegmentationResult:
        if self.error is not None:
            raise self.error
        return self

    def class_pixels(self) -> dict[str, int]:
        """``{class name: pixels}`` for the classes present."""
        return {c.name: c.pixels for c in self.classes}

    def mask_png_bytes(self) -> bytes:
        """The mask as a PNG file: the service's own PNG when it sent one, else ``labels`` encoded."""
        if self.mask_png is not None:
            return self.mask_png
        if self.labels is None:
            raise ValueError(f"no label map to write (format {self.format!r} has none, or the frame failed)")
        from segserve_client.decode import encode_label_png

        return encode_label_png(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: everything but the pixel arrays and PNG payloads."""
        out: dict[str, Any] = {
            "model": self.model,
            "task": self.task,
            "frame_id": self.frame_id or None,
            "request_id": self.request_id,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "classes": [c._asdict() for c in self.classes],
            "batch_size": self.batch_size,
            "timings_ms": self.timings_ms,
        }
        if self.segments:
            out["segments"] = self.segments
        if self.instances:
            out["instances"] = self.instances
        if self.rle is not None:
            out["rle"] = self.rle
        if self.polygons is not None:
            out["polygons"] = self.polygons
        if self.error is not None:
            out["error"] = self.error.to_dict()
        return out

    def summary(self) -> str:
        """One line: size, classes present with pixel counts, timings."""
        if self.error is not None:
            prefix = f"{self.frame_id}: " if self.frame_id else ""
            return f"{prefix}error {self.error}"
        classes = ", ".join(f"{c.name}={c.pixels}" for c in self.classes) or "none"
        timings = " ".join(f"{k}={v:.1f}" for k, v in self.timings_ms.items())
        head = f"{self.frame_id}: " if self.frame_id else ""
        return (
            f"{head}{self.model} ({self.task}) {self.width}x{self.height} | classes {classes}"
            f"{f' | segments {len(self.segments)}' if self.segments else ''}"
            f"{f' | instances {len(self.instances)}' if self.instances else ''}"
            f" | ms {timings or '-'} | batch {self.batch_size} | request {self.request_id}"
        )
