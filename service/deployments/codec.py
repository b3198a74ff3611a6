"""The split topology's codec deployment: ``CodecStage`` (``service/codec.py``) in replicas of its own,
so decoding and encoding scale apart from the GPU replicas."""

from __future__ import annotations

from ray import serve

from service.codec import CodecStage
from service.config import Limits, ModelSpec
from service.types import ImageInput, PreparedImage, Segmentation, SegmentOptions, SegmentResult


@serve.deployment(name="ImageCodec")
class ImageCodec:
    def __init__(self, specs: dict[str, ModelSpec], limits: Limits) -> None:
        self.specs = specs
        self.stage = CodecStage(limits)

    # Sync methods: Ray Serve 2.60 runs them in a thread pool, so decoding several images overlaps
    # (Pillow and numpy release the GIL) and the replica's event loop stays free.
    def prepare(self, body: ImageInput, content_type: str | None, options: SegmentOptions) -> PreparedImage:
        return self.stage.prepare(body, content_type, options, self.specs[options.model])

    def encode(self, segmentation: Segmentation) -> SegmentResult:
        return self.stage.encode(segmentation, self.specs[segmentation.options.model])
