"""The protocol-agnostic core that both the HTTP routes and the gRPC methods call.

It validates, routes by model name, enforces the deadline and calls the model's segmenter: in the
fused topology (``codec`` is None) one call, ``segmenter.segment_image``; in the split topology
codec.prepare chained into segmenter.segment (decoded pixels go from replica to replica through Ray's
object store, never through the ingress), then codec.encode with the label map.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from service.api.errors import to_service_error
from service.config import AppSettings, ModelSpec, Repository, file_digest
from service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelNotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
)
from service.types import SegmentOptions, SegmentResult


def new_request_id(given: str | None = None) -> str:
    """The caller's id when it is sane (printable, <= 128 chars), else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def parse_timeout_ms(value: str | None, name: str) -> float | None:
    """A caller's timeout header (milliseconds) as seconds; None when absent. 400 unless a positive number."""
    if value is None or not value.strip():
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise InvalidArgument(f"{name} must be a positive number of milliseconds, got {value[:32]!r}")
    return ms / 1000


def load_api_keys(settings: AppSettings) -> tuple[bytes, ...]:
    keys: list[str] = []
    if settings.api_keys_env:
        keys += os.environ.get(settings.api_keys_env, "").split(",")
    if settings.api_keys_file:
        keys += Path(settings.api_keys_file).read_text().splitlines()
    return tuple(k.strip().encode() for k in keys if k.strip())


def model_info(spec: ModelSpec, digest: str | None) -> dict[str, Any]:
    """What ``GET /v1/models/{model}`` and gRPC ``GetModel`` describe."""
    return {
        "name": spec.name,
        "task": spec.task,
        "version": spec.version,
        "weights_digest": digest or "",
        "description": spec.description.strip(),
        "architecture": spec.architecture or spec.format,  # exported artefacts carry their own graph
        "classes": [
            {"id": c.id, "name": c.name, "color": list(c.color), "isthing": c.isthing} for c in spec.classes
        ],
        "input": {
            "mode": spec.input.mode,
            "size": spec.input.size,
            "size_divisor": spec.input.size_divisor,
            "mean": list(spec.input.mean),
            "std": list(spec.input.std),
        },
        "max_batch_size": spec.batching.max_batch_size,
    }


class SegmentationCore:
    def __init__(
        self, repository: Repository, settings: AppSettings, codec: Any | None, segmenters: dict[str, Any]
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.codec = codec
        self.segmenters = segmenters
        self.api_keys = load_api_keys(settings)
        self.api_key_digests = tuple(hashlib.sha256(k).digest() for k in self.api_keys)
        self.digests = {
            spec.name: file_digest(repository.weights_path(spec)) if spec.weights else None
            for spec in repository.models
            if spec.name in segmenters
        }

    # --- metadata ---------------------------------------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        spec = self.repository.get(name)
        if spec is None or name not in self.segmenters:
            raise ModelNotFound(name, sorted(self.segmenters))
        return spec

    def list_models(self) -> list[dict[str, Any]]:
        return [model_info(self.spec(n), self.digests.get(n)) for n in sorted(self.segmenters)]

    def get_model(self, name: str) -> dict[str, Any]:
        return model_info(self.spec(name), self.digests.get(name))

    # --- auth ---------------------------------------------------------------------------------------

    def authenticate(self, key: str | None) -> None:
        """No keys configured: open. Otherwise the key must match one, compared in constant time."""
        if not self.api_keys:
            return
        # Fixed-length digests, so neither a key's length nor its content shows in the timing, and
        # every key is compared (no early exit), so neither does which one matched.
        given = hashlib.sha256((key or "").encode()).digest()
        matched = [hmac.compare_digest(given, k) for k in self.api_key_digests]
        if not any(matched):
            raise Unauthenticated("missing or invalid API key")

    # --- segmentation -------------------------------------------------------------------------------

    def check_body(self, body: bytes) -> None:
        limit = self.settings.limits.max_body_bytes
        if len(body) > limit:
            raise PayloadTooLarge(f"body of {len(body)} bytes is over the limit of {limit} bytes")

    def deadline(self, timeout_s: float | None) -> float:
        """Absolute deadline: the caller's timeout, capped by the configured request timeout."""
        limit = self.settings.limits.request_timeout_s
        return time.time() + (min(timeout_s, limit) if timeout_s else limit)

    async def segment(self, body: bytes, content_type: str | None, options: SegmentOptions) -> SegmentResult:
        self.spec(options.model)
        self.check_body(body)
        started = time.perf_counter()
        segmenter = self.segmenters[options.model]
        responses: list[Any] = []  # every handle call made, to cancel them all on a timeout

        async def fused() -> SegmentResult:
            responses.append(segmenter.segment_image.remote(body, content_type, options))
            return await responses[-1]

        async def split() -> SegmentResult:
            responses.append(prepared := self.codec.prepare.remote(body, content_type, options))
            responses.append(segmented := segmenter.segment.remote(prepared))
            # The label map comes back here (1 byte per pixel) instead of being chained into encode:
            # when the segmenter's node crashed, Ray 2.60's router retried a chained encode call
            # ("ImageCodec is temporarily unavailable") until the deadline, and the request was lost
            # with a 504 in 2 of 5 runs (tests/integration/multinode_scenario.py --crash). Awaited
            # here, the crash surfaces as ActorDiedError: a 503 the client retries.
            segmentation = await segmented
            responses.append(encoded := self.codec.encode.remote(segmentation))
            return await encoded

        remaining = (options.deadline or self.deadline(None)) - time.time()
        try:
            chain = fused() if self.codec is None else split()
            result = await asyncio.wait_for(chain, timeout=max(remaining, 0.001))
        except TimeoutError:
            for response in responses:
                response.cancel()  # downstream replicas drop the work instead of finishing it
            raise DeadlineExceeded("the request did not finish within its deadline") from None
        except Exception as e:
            # Classified here, before FastAPI sees it: Ray Serve registers its own handlers on the app
            # for BackPressureError / DeploymentUnavailableError, which answer a plain-text 503 without
            # Retry-After. As ServiceErrors they get the JSON body and Retry-After like every error.
            raise to_service_error(e) from None
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000
        return result

    async def ready(self) -> dict[str, Any]:
        """Every model answers from a loaded, warmed replica within a short time."""
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(_await(h.ready.remote()) for h in self.segmenters.values())), timeout=5
            )
        except Exception as e:
            raise Unavailable(f"not ready: {type(e).__name__}") from None
        return {"status": "ready", "models": answers}


async def _await(response):
    return await response
