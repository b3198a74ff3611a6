"""``build_app(args)``: read the model repository and bind the deployment graph (the one place it is bound).

fused:  client -> Ingress (decode, batch, forward, encode: every served model in each replica)
split:  client -> Ingress -> ImageCodec.prepare -> Segmenter-<model>.segment -> ImageCodec.encode -> Ingress
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


def segmenter_app(spec: ModelSpec, repository: Repository) -> Application:
    d = spec.deployment
    options: dict[str, Any] = {
        "name": f"Segmenter-{spec.name}",
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        # Must cover a whole batch, or Ray Serve caps the batch at max_ongoing_requests.
        "max_ongoing_requests": max(d.max_ongoing_requests, spec.batching.max_batch_size),
        "max_queued_requests": d.max_queued_requests,
        **_scaling(d),
    }
    weights = str(repository.weights_path(spec)) if spec.weights else None
    return Segmenter.options(**options).bind(spec, weights)


def build_app(args: dict[str, Any] | None = None) -> Application:
    settings: AppSettings = parse_app_settings(args)
    repository = load_repository(resolve_path(settings.repository))
    names = settings.models or repository.names()
    missing = [n for n in names if repository.get(n) is None]
    if missing:
        raise ValueError(f"models {missing} are not in {settings.repository}; known: {repository.names()}")
    specs = [repository.get(n) for n in names]
    if resolve_topology(settings, specs) == "fused":
        return _ingress(repository, settings, names, fused=True)
    codec = _codec_app(specs, settings)
    segmenters = {s.name: segmenter_app(s, repository) for s in specs}
    return _ingress(repository, settings, names, codec=codec, segmenters=segmenters)


def _scaling(spec: Any) -> dict[str, Any]:
    """Ray Serve's replica options of a spec with ``num_replicas`` and optional ``autoscaling``."""
    if spec.autoscaling is not None:
        return {"autoscaling_config": spec.autoscaling.model_dump()}
    return {"num_replicas": spec.num_replicas}


def _codec_app(specs: list[ModelSpec], settings: AppSettings) -> Application:
    c = settings.codec
    return ImageCodec.options(
        ray_actor_options={"num_cpus": c.num_cpus},
        max_ongoing_requests=c.max_ongoing_requests,
        **_scaling(c),
    ).bind({s.name: s for s in specs}, settings.limits)


def _ingress(
    repository: Repository,
    settings: AppSettings,
    names: list[str],
    *,
    fused: bool = False,
    codec: Application | None = None,
    segmenters: dict[str, Application] | None = None,
) -> Application:
    i = settings.ingress
    return Ingress.options(
        ray_actor_options={"num_cpus": i.num_cpus, "num_gpus": i.num_gpus if fused else 0},
        max_ongoing_requests=i.max_ongoing_requests,
        max_queued_requests=i.max_queued_requests,
        # When the ingress queue is full, Ray's proxy answers for us: give that 503 a Retry-After too.
        backpressure_config={"status_code": 503, "retry_after_s": RETRY_AFTER_S},
        **_scaling(i),
    ).bind(repository, settings, names, codec, segmenters)


__all__ = ["build_app", "serve"]
