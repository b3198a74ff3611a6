"""The work every peer does for a request, made of the service's own pure functions, so that only the
serving stack differs from ours: ``prepare_image`` (decode + fit to the input policy), the runner of
``build_runner`` (normalize, forward, restore to the original size, argmax) and ``encode_result``
(the label-map PNG). Torch threads per model process are the replicas' own (``DeploymentSpec.threads``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from service.config import Limits, ModelSpec, load_repository
from service.pipeline import encode_result, prepare_image
from service.types import PreparedImage, Segmentation, SegmentOptions


class PeerPipeline:
    """Loads one model of a repository; ``segment`` = bytes in, label-map PNG out."""

    def __init__(self, repository_path: str | Path, model: str) -> None:
        from service.models.inference import configure_threads
        from service.models.runners import build_runner

        repository = load_repository(repository_path)
        spec = repository.get(model)
        if spec is None:
            raise SystemExit(f"model {model!r} is not in {repository_path}")
        self.spec: ModelSpec = spec
        self.threads = configure_threads(spec.deployment.threads)
        self.runner = build_runner(spec, repository.weights_path(spec) if spec.weights else None)
        self.runner.warm_up()
        self.limits = Limits()
        self.options = SegmentOptions(model=spec.name)

    def prepare(self, body: bytes, content_type: str | None = None) -> PreparedImage:
        return prepare_image(body, content_type, self.options, self.spec, self.limits)

    def run(self, items: list[PreparedImage]) -> list[Segmentation]:
        return self.runner.run(items, [time.perf_counter()] * len(items))

    def encode(self, segmentation: Segmentation) -> bytes:
        png = encode_result(segmentation, self.spec).mask_png
        assert png is not None  # format "png": always set
        return png

    def segment(self, body: bytes, content_type: str | None = None) -> bytes:
        """One image end to end, no batching."""
        return self.encode(self.run([self.prepare(body, content_type)])[0])


def peer_parser(description: str) -> argparse.ArgumentParser:
    """The options every peer app takes (an app may add its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    return p


def parse_peer_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    return peer_parser(description).parse_args(argv)
