"""``build_app(args)``: read the model repository and bind the deployment graph (the one place it is bound).

split:  client -> Ingress -> ImageCodec.prepare -> Segmenter-<model>.segment -> ImageCodec.encode -> Ingress
fused:  client -> Ingress -> Segmenter-<model>.segment_image (decode, batch, forward, encode) -> Ingress
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from service.api.errors import RETRY_AFTER_S
from service.config import AppSettings, ModelSpec, Repository, load_repository, parse_app_settings
from service.deployments.codec import CodecStage, ImageCodec
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


def on_cpu(spec: ModelSpec) -> bool:
    d = spec.deployment
    return d.device == "cpu" or (d.device == "auto" and d.num_gpus == 0)


def resolve_topology(settings: AppSettings, specs: list[ModelSpec]) -> str:
    """auto: fused when every served model runs on CPU. There every hop between deployments costs
    CPU the model needs (the codec's two hops were ~12 ms of CPU per request on a 2-core machine);
    on GPU the codec stays apart so GPU replicas spend their time on tensor work."""
    if settings.topology != "auto":
        return settings.topology
    return "fused" if all(on_cpu(s) for s in specs) else "split"


def segmenter_app(spec: ModelSpec, repository: Repository, codec: CodecStage | None = None) -> Application:
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
    return Segmenter.options(**options).bind(spec, weights, codec)


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings: AppSettings = parse_app_settings(args)
    repository = load_repository(resolve_path(settings.repository))
    names = settings.models or repository.names()
    missing = [n for n in names if repository.get(n) is None]
    if missing:
        raise ValueError(f"models {missing} are not in {settings.repository}; known: {repository.names()}")
    specs = [repository.get(n) for n in names]
    if resolve_topology(settings, specs) == "fused":
        stage = CodecStage(repository, settings.limits)
        segmenters = {s.name: segmenter_app(s, repository, stage) for s in specs}
        return _ingress(repository, settings, None, segmenters)
    segmenters = {s.name: segmenter_app(s, repository) for s in specs}
    return _ingress(repository, settings, _codec_app(repository, settings), segmenters)


def _codec_app(repository: Repository, settings: AppSettings) -> Application:
    c = settings.codec
    codec_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": c.num_cpus},
        "max_ongoing_requests": c.max_ongoing_requests,
    }
    if c.autoscaling is not None:
        codec_options["autoscaling_config"] = _autoscaling(c.autoscaling)
    else:
        codec_options["num_replicas"] = c.num_replicas
    return ImageCodec.options(**codec_options).bind(repository, settings.limits)


def _ingress(
    repository: Repository,
    settings: AppSettings,
    codec: Application | None,
    segmenters: dict[str, Application],
) -> Application:
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
