"""The protocol-agnostic core that both the HTTP routes and the gRPC methods call.

It authenticates, resolves the model, enforces the body limit and the deadline, and hands the request
to ``models``: in the fused topology the models of this very replica (``service.worker.LocalModels``,
no hop), in the split topology the codec and segmenter deployments
(``service.deployments.split.SplitModels``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

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
    info: dict[str, Any] = {
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
    if spec.input.max_size is not None:
        info["input"]["max_size"] = spec.input.max_size
    if spec.instance is not None:
        info["instance"] = spec.instance.model_dump()
    return info


class Models(Protocol):
    """Where the served models run (fused: in this process; split: in deployments of their own)."""

    async def segment(
        self, body: bytes, content_type: str | None, options: SegmentOptions, spec: ModelSpec
    ) -> SegmentResult: ...

    async def ready(self) -> list[dict[str, Any]]: ...


class SegmentationCore:
    def __init__(
        self, repository: Repository, settings: AppSettings, names: list[str], models: Models
    ) -> None:
        self.settings = settings
        self.specs: Mapping[str, ModelSpec] = {name: repository.get(name) for name in names}
        self.models = models
        self.api_keys = load_api_keys(settings)
        self.api_key_digests = tuple(hashlib.sha256(k).digest() for k in self.api_keys)
        self.digests = {
            name: file_digest(repository.weights_path(spec)) if spec.weights else None
            for name, spec in self.specs.items()
        }

    @property
    def served(self) -> list[str]:
        return sorted(self.specs)

    # --- metadata ---------------------------------------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise ModelNotFound(name, self.served)
        return spec

    def list_models(self) -> list[dict[str, Any]]:
        return [model_info(self.specs[n], self.digests[n]) for n in self.served]

    def get_model(self, name: str) -> dict[str, Any]:
        return model_info(self.spec(name), self.digests[name])

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

    async def segment(
        self, spec: ModelSpec, body: bytes, content_type: str | None, options: SegmentOptions
    ) -> SegmentResult:
        """Segment ``body`` with the model of ``spec`` (resolved by the caller with ``spec``, once)."""
        self.check_body(body)
        started = time.perf_counter()
        remaining = (options.deadline or self.deadline(None)) - time.time()
        try:
            # On timeout wait_for cancels the call, and the models drop the work (queued items are
            # skipped by the batcher, split handle calls are cancelled).
            result = await asyncio.wait_for(
                self.models.segment(body, content_type, options, spec), timeout=max(remaining, 0.001)
            )
        except TimeoutError:
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
            answers = await asyncio.wait_for(self.models.ready(), timeout=5)
        except Exception as e:
            raise Unavailable(f"not ready: {type(e).__name__}") from None
        return {"status": "ready", "models": answers}
