"""The benchmark's phase for our service: started on free ports (``local_service.LocalService``) or
a running one (``--url``), its label maps checked, the closed-loop sweep, metrics before and after."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import closed_loop, labelmaps, large, proc_cpu, promparse
from loadtests.common import log
from loadtests.local_service import LocalService
from loadtests.peers.phase import sweep_settings


@dataclass(frozen=True)
class Endpoints:
    url: str
    grpc_target: str | None
    metrics_url: str | None


def run_ours(args, repository: Path, models: list[str], images, references: dict) -> dict[str, Any]:
    """``{"served": rows, "metrics": ..., "label_maps": {model: check}}`` for our service."""
    if args.url:  # a service deployed elsewhere may serve other weights: its label maps are not checked
        ours = Endpoints(args.url, args.grpc_target, args.metrics_url)
        return run_served(args, ours, models, images, {}, proc_cpu.Roles(), args.repository)
    app_args = {"topology": args.topology} if args.topology else {}
    if args.large_image:
        app_args["limits"] = large_image_limits()
    service = LocalService(repository, models, args.num_cpus, app_args)
    try:
        # Only the processes this benchmark started count as ours (the machine may run other clusters).
        roles = proc_cpu.Roles(outside_by_name=False)
        return run_served(args, service, models, images, references, roles, repository)
    finally:
        service.stop()


def run_served(
    args, ours, models, images, references: dict, roles: proc_cpu.Roles, repository: Path
) -> dict[str, Any]:
    maps = {m: labelmaps.check(ours.url, m, images, references[m]) for m in models if m in references}
    for model, check in maps.items():
        if check["mismatches"]:
            log(f"  LABEL MAPS DIFFER (ours, {model}): {check['mismatches'][:3]}")
    points = [
        closed_loop.PointSpec(protocol, model, c)
        for model in models
        for protocol in args.protocols
        for c in args.concurrency
    ]
    # What the service costs with nothing to do (Ray's processes, health checks, metrics), before load.
    idle_s = 2.0 if args.quick else proc_cpu.IDLE_S
    log(f"idle CPU of the service over {idle_s:g} s ...")
    idle = proc_cpu.idle_ms_per_s(roles, idle_s)
    before = _scrape(ours.metrics_url)
    served = closed_loop.measure(
        points,
        images,
        url=ours.url,
        grpc_target=ours.grpc_target,
        roles=roles,
        **sweep_settings(args),
        log=log,
    )
    if args.metrics_settle_s > 0:
        log(f"waiting {args.metrics_settle_s:g} s for Ray's metrics export ...")
        time.sleep(args.metrics_settle_s)
    metrics = batch_metrics(ours.metrics_url, before, _scrape(ours.metrics_url))
    out = {"served": served, "metrics": metrics, "label_maps": maps, "idle_cpu_ms_per_s": idle}
    model = args.large_model or large.tiled_model(repository, models)
    if args.large_image and model:
        repeats = 1 if args.quick else 2
        out["large"] = large.run_large(
            ours.url, repository, model, args.large_image, repeats, LARGE_TIMEOUT_S
        )
    return out


# A large picture on a CPU takes tens of seconds: the app's deadline is raised to just below the HTTP
# proxy's own request timeout (http_options.request_timeout_s, 60 s in deploy/serve_config.yaml).
LARGE_TIMEOUT_S = 59.0


def large_image_limits() -> dict[str, Any]:
    from service.local import load_serve_config

    limits = load_serve_config()["applications"][0].get("args", {}).get("limits", {})
    return {**limits, "request_timeout_s": LARGE_TIMEOUT_S}


def batch_metrics(url: str | None, before: dict | None, after: dict | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {"url": url}
    if before is not None and after is not None:
        hist = promparse.delta(before, after)
        metrics["histograms"] = hist
        metrics["mean_batch_size"] = promparse.mean_batch_sizes(hist)
    else:
        metrics["error"] = "metrics endpoint not readable"
    return metrics


def _scrape(url: str | None) -> dict | None:
    if not url:
        return None
    try:
        return promparse.histograms(promparse.scrape(url))
    except Exception as e:
        log(f"  (metrics not read from {url}: {type(e).__name__}: {e})")
        return None


def served_models_of(url: str) -> list[str]:
    import httpx

    r = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=30)
    r.raise_for_status()
    return [m["name"] for m in r.json()["models"]]
