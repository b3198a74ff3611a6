"""The split topology's models, seen from the ingress: the codec and per-model segmenter deployments."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np

from service.config import ModelSpec
from service.types import ImageInput, SegmentOptions, SegmentResult, payload_bytes

# A handle call whose argument is at most this many bytes goes over Ray Serve's gRPC transport
# (``_by_reference=False``): the argument travels in the call, without an object-store put and get
# and an actor task. Measured with loadtests/levers.py (split-haproxy against split-grpc-handles, two
# pairs, 16 clients): 1.2-1.9x the requests/s and 16-47 % less CPU per request. Larger arguments
# still go by reference: a large picture's pixels are better left in the object store than copied
# through the ingress. Answers come back the way their call went, so a small file that decodes to a
# large picture comes back by value: ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH`` (Ray: 4 MiB) is
# raised to 512 MiB wherever the service runs (``service.local.RAY_SERVE_ENV``, the pods' env).
BY_VALUE_MAX_BYTES = 2 << 20


def carried_bytes(value: Any) -> int:
    """The bytes of the arrays and byte strings a call argument carries (dataclasses, lists and dicts
    walked; numbers and short strings count as nothing)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(carried_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, list | tuple):
        return sum(carried_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(carried_bytes(v) for v in value.values())
    return 0


class SplitModels:
    """codec.prepare, then segmenter.segment, then codec.encode with the label map. Small arguments go
    by value over gRPC; a large body's decoded pixels go codec to segmenter through Ray's object store,
    never through the ingress."""

    def __init__(self, codec: Any, segmenters: dict[str, Any]) -> None:
        self.codec = codec
        self.segmenters = segmenters
        self.codec_by_value = codec.options(_by_reference=False)
        self.segmenters_by_value = {n: h.options(_by_reference=False) for n, h in segmenters.items()}

    async def segment(
        self, body: ImageInput, content_type: str | None, options: SegmentOptions, spec: ModelSpec
    ) -> SegmentResult:
        responses: list[Any] = []  # every handle call made, to cancel them all when the caller gives up
        small = payload_bytes(body) <= BY_VALUE_MAX_BYTES
        try:
            codec = self.codec_by_value if small else self.codec
            responses.append(prepared := codec.prepare.remote(body, content_type, options))
            if small:  # the prepared image is here: a small one goes on by value too
                prepared = await prepared
                small = carried_bytes(prepared) <= BY_VALUE_MAX_BYTES
            segmenter = (self.segmenters_by_value if small else self.segmenters)[spec.name]
            responses.append(segmented := segmenter.segment.remote(prepared))
            # The label map comes back here (1 byte per pixel) instead of being chained into encode:
            # when the segmenter's node crashed, Ray 2.60's router retried a chained encode call
            # ("ImageCodec is temporarily unavailable") until the deadline, and the request was lost
            # with a 504 in 2 of 5 runs (tests/integration/multinode_scenario.py --crash). Awaited
            # here, the crash surfaces as ActorDiedError: a 503 the client retries.
            segmentation = await segmented
            codec = self.codec_by_value if carried_bytes(segmentation) <= BY_VALUE_MAX_BYTES else self.codec
            responses.append(encoded := codec.encode.remote(segmentation))
            return await encoded
        except asyncio.CancelledError:
            for response in responses:
                response.cancel()  # downstream replicas drop the work instead of finishing it
            raise

    async def ready(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(_await(h.ready.remote()) for h in self.segmenters.values())))


async def _await(response):
    return await response
