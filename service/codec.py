"""The CPU work before and after the model: decode and fit an image, then encode the answer.

``CodecStage`` is a plain class; where it runs is the topology's choice (``service.app``): inside each
fused ingress replica, next to the models, or in the split topology's own ``ImageCodec`` deployment so
GPU replicas do tensor work only. The caller passes the model's spec it already resolved.
"""

from __future__ import annotations

import time

from service import metrics
from service.config import Limits, ModelSpec
from service.errors import DeadlineExceeded
from service.pipeline import encode_result, prepare_image
from service.types import (
    ImageInput,
    PreparedImage,
    Segmentation,
    SegmentOptions,
    SegmentResult,
    payload_bytes,
)


class CodecStage:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def prepare(
        self, body: ImageInput, content_type: str | None, options: SegmentOptions, spec: ModelSpec
    ) -> PreparedImage:
        if options.deadline is not None and time.time() > options.deadline:
            # Queued past its deadline: the caller has its 504 already, so decoding would be wasted.
            raise DeadlineExceeded("the deadline passed before the image was decoded")
        prepared = prepare_image(body, content_type, options, spec, self.limits)
        metrics.record_prepared(prepared, payload_bytes(body))
        return prepared

    def encode(self, segmentation: Segmentation, spec: ModelSpec) -> SegmentResult:
        result = encode_result(segmentation, spec)
        metrics.record_encoded(result)
        return result
