"""The split topology's segmenter: one deployment per model, batching prepared images on its device.

The work is ``service.worker.ModelWorker``; this is its Ray Serve shell.
"""

from __future__ import annotations

from pathlib import Path

from ray import serve

from service.config import ModelSpec
from service.models.inference import configure_threads
from service.types import PreparedImage, Segmentation
from service.worker import ModelWorker


@serve.deployment
class Segmenter:
    def __init__(self, spec: ModelSpec, weights: str | None) -> None:
        self.threads = configure_threads(spec.deployment.threads)
        self.worker = ModelWorker(spec, Path(weights) if weights else None)

    async def segment(self, prepared: PreparedImage) -> Segmentation:
        return await self.worker.segment(prepared)

    def ready(self) -> dict:
        return {**self.worker.ready(), "threads": self.threads}

    def check_health(self) -> None:
        self.worker.check_health()
