"""``build_app(args)``: read the model repository and bind the deployment graph (the one place it is bound).

client -> Ingress -> ImageCodec.prepare -> Segmenter-<model> -> ImageCodec.encode -> Ingress
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from service.api.errors import RETRY_AFTER_S
from service.config import AppSettings, ModelSpec, Repository, load_repository, parse_app_settings
from service.deployments.codec import ImageCodec
from service.deployments.ingress import Ingress
from service.deployments.segmenter import Segmenter

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str) -> Path:
    """Relative paths are taken from the working directory, else from the project root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (PROJECT_ROOT / p).resolve()


def _autoscaling(spec) -> dict[str, Any] | None:
    return spec.model_dump() if spec is not None else None


def segmenter_app(spec: ModelSpec, repository: Repository) -> Application:
    d = spec.deployment
    options: dict[str, Any] = {
        "name": f"Segmenter-{spec.name}",
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        # Must cover a whole batch, or Ray Serve caps the batch at max_ongoing_requests.
        "max_ongoing_requests": max(d.max_ongoing_requests, spec.batching.max_batch_size),
        "max_queued_requests": d.max_queued_requests,
    }
    if d.autoscaling is not None:
        options["autoscaling_config"] = _autoscaling(d.autoscaling)
    else:
        options["num_replicas"] = d.num_replicas
    weights = str(repository.weights_path(spec)) if spec.weights else None
    return Segmenter.options(**options).bind(spec, weights)


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings: AppSettings = parse_app_settings(args)
    repository = load_repository(resolve_path(settings.repository))
    names = settings.models or repository.names()
    missing = [n for n in names if repository.get(n) is None]
    if missing:
        raise ValueError(f"models {missing} are not in {settings.repository}; known: {repository.names()}")
    segmenters = {name: segmenter_app(repository.get(name), repository) for name in names}

    c = settings.codec
    codec_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": c.num_cpus},
        "max_ongoing_requests": c.max_ongoing_requests,
    }
    if c.autoscaling is not None:
        codec_options["autoscaling_config"] = _autoscaling(c.autoscaling)
    else:
        codec_options["num_replicas"] = c.num_replicas
    codec = ImageCodec.options(**codec_options).bind(repository, settings.limits)

    i = settings.ingress
    return Ingress.options(
        num_replicas=i.num_replicas,
        ray_actor_options={"num_cpus": i.num_cpus},
        max_ongoing_requests=i.max_ongoing_requests,
        max_queued_requests=i.max_queued_requests,
        # When the ingress queue is full, Ray's proxy answers for us: give that 503 a Retry-After too.
        backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    ).bind(repository, settings, codec, segmenters)


__all__ = ["build_app", "serve"]
