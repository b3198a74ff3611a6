"""The CPU stage before and after the model (decode/resize, then encode the answer).

``CodecStage`` is the work itself, a plain class; where it runs is the topology's choice
(``service.app.resolve_topology``): in its own ``ImageCodec`` deployment ("split", so GPU replicas do
tensor work only), or inside each segmenter replica ("fused", on CPU nodes, two fewer hops per request).
"""

from __future__ import annotations

import time

from ray import serve

from service import metrics
from service.config import Limits, ModelSpec, Repository
from service.errors import DeadlineExceeded, ModelNotFound
from service.pipeline import encode_result, prepare_image
from service.types import PreparedImage, Segmentation, SegmentOptions, SegmentResult


class CodecStage:
    def __init__(self, repository: Repository, limits: Limits) -> None:
        self.repository = repository
        self.limits = limits

    def _spec(self, model: str) -> ModelSpec:
        spec = self.repository.get(model)
        if spec is None:
            raise ModelNotFound(model, self.repository.names())
        return spec

    def prepare(self, body: bytes, content_type: str | None, options: SegmentOptions) -> PreparedImage:
        if options.deadline is not None and time.time() > options.deadline:
            # Queued past its deadline: the caller has its 504 already, so decoding would be wasted.
            raise DeadlineExceeded("the deadline passed before the image was decoded")
        prepared = prepare_image(body, content_type, options, self._spec(options.model), self.limits)
        metrics.record_prepared(prepared, len(body))
        return prepared

    def encode(self, segmentation: Segmentation) -> SegmentResult:
        result = encode_result(segmentation, self._spec(segmentation.options.model))
        metrics.record_encoded(result)
        return result


@serve.deployment(name="ImageCodec")
class ImageCodec:
    """The split topology's codec deployment."""

    def __init__(self, repository: Repository, limits: Limits) -> None:
        self.stage = CodecStage(repository, limits)

    # Sync methods: Ray Serve 2.60 runs them in a thread pool, so decoding several images overlaps
    # (Pillow and numpy release the GIL) and the replica's event loop stays free.
    def prepare(self, body: bytes, content_type: str | None, options: SegmentOptions) -> PreparedImage:
        return self.stage.prepare(body, content_type, options)

    def encode(self, segmentation: Segmentation) -> SegmentResult:
        return self.stage.encode(segmentation)
