"""The split topology's models, seen from the ingress: the codec and per-model segmenter deployments."""

from __future__ import annotations

import asyncio
from typing import Any

from service.config import ModelSpec
from service.types import ImageInput, SegmentOptions, SegmentResult


class SplitModels:
    """codec.prepare chained into segmenter.segment (decoded pixels go replica to replica through Ray's
    object store, never through the ingress), then codec.encode with the label map."""

    def __init__(self, codec: Any, segmenters: dict[str, Any]) -> None:
        self.codec = codec
        self.segmenters = segmenters

    async def segment(
        self, body: ImageInput, content_type: str | None, options: SegmentOptions, spec: ModelSpec
    ) -> SegmentResult:
        responses: list[Any] = []  # every handle call made, to cancel them all when the caller gives up
        try:
            responses.append(prepared := self.codec.prepare.remote(body, content_type, options))
            responses.append(segmented := self.segmenters[spec.name].segment.remote(prepared))
            # The label map comes back here (1 byte per pixel) instead of being chained into encode:
            # when the segmenter's node crashed, Ray 2.60's router retried a chained encode call
            # ("ImageCodec is temporarily unavailable") until the deadline, and the request was lost
            # with a 504 in 2 of 5 runs (tests/integration/multinode_scenario.py --crash). Awaited
            # here, the crash surfaces as ActorDiedError: a 503 the client retries.
            segmentation = await segmented
            responses.append(encoded := self.codec.encode.remote(segmentation))
            return await encoded
        except asyncio.CancelledError:
            for response in responses:
                response.cancel()  # downstream replicas drop the work instead of finishing it
            raise

    async def ready(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_await(h.ready.remote()) for h in self.segmenters.values())))


async def _await(response):
    return await response
