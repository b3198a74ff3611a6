"""The served side of the benchmark: a temporary model repository with a null model, the service on
free ports (``service.local.start_local`` + ``deploy``), and the closed-loop sweep with metrics.

The app takes one repository file, and weights may not leave its folder (``Repository.weights_path``),
so the temporary repository (under the gitignored ``loadtests/results/tmp/``) gets hard links to
(or copies of) the chosen models' weights, plus a ``null`` model: architecture null (a 1x1 conv),
no weights, the classes, input policy, batching and deployment of the first semantic model. The
null model runs the same pipeline with near-zero compute: its numbers are the serving overhead.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from loadtests import closed_loop, promparse
from loadtests.common import free_port

NULL_MODEL = "null"


def log(message: str) -> None:
    print(message, flush=True)


def null_entry(reference: dict[str, Any], name: str = NULL_MODEL) -> dict[str, Any]:
    """A null model with the reference model's classes, input policy, batching and deployment."""
    entry: dict[str, Any] = {
        "name": name,
        "task": "semantic",
        "architecture": "null",
        "weights": None,
        "description": "Benchmark null model: a 1x1 conv, near-zero compute, same pipeline.",
        "classes": [
            {k: copy.deepcopy(v) for k, v in c.items() if k != "isthing"} for c in reference["classes"]
        ],
    }
    for key in ("input", "batching", "deployment"):
        if key in reference:
            entry[key] = copy.deepcopy(reference[key])
    return entry


def write_repository(
    source: Path, models: list[str], with_null: bool, folder: Path
) -> tuple[Path, str | None]:
    """``folder/repository.yaml`` with ``models`` from ``source`` (weights hard-linked or copied under
    ``folder``, since weights may not leave the repository root) plus a null model."""
    raw_yaml = yaml.safe_load(source.read_text())
    entries = {e["name"]: e for e in raw_yaml["models"]}
    folder.mkdir(parents=True, exist_ok=True)
    chosen = []
    for name in models:
        entry = copy.deepcopy(entries[name])
        if entry.get("weights"):
            src = (source.parent / entry["weights"]).resolve()
            dst = folder / entry["weights"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        chosen.append(entry)
    null_name = None
    if with_null:
        semantic = [entries[m] for m in models if entries[m].get("task") == "semantic"]
        reference = (
            semantic[0] if semantic else next(e for e in raw_yaml["models"] if e.get("task") == "semantic")
        )
        null_name = NULL_MODEL if NULL_MODEL not in entries else f"{NULL_MODEL}-bench"
        chosen.append(null_entry(reference, null_name))
    path = folder / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": chosen}, sort_keys=False))
    return path, null_name


def ray_cpus(repository_path: Path, models: list[str], app_args: dict[str, Any]) -> int:
    """Logical CPUs every replica asks for (Ray's CPUs are only for scheduling), at least the cores."""
    from service.config import load_repository, parse_app_settings

    repository = load_repository(repository_path)
    settings = parse_app_settings(app_args)
    need = 0.0
    for name in models:
        d = repository.get(name).deployment
        replicas = d.autoscaling.max_replicas if d.autoscaling else d.num_replicas
        need += d.num_cpus * replicas
    codec = settings.codec
    need += codec.num_cpus * (codec.autoscaling.max_replicas if codec.autoscaling else codec.num_replicas)
    need += settings.ingress.num_cpus * settings.ingress.num_replicas
    return max(os.cpu_count() or 2, math.ceil(need) + 1)


def wait_ready(url: str, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout_s:.0f}s: {last}")


class LocalService:
    """Ray + Serve on free ports with the temporary repository; ``stop()`` shuts both down."""

    def __init__(self, repository_path: Path, models: list[str], num_cpus: float | None) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from service.local import deploy, load_serve_config, start_local

        config = load_serve_config()
        app_args = config["applications"][0].get("args", {})
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        cpus = num_cpus or ray_cpus(repository_path, models, app_args)
        log(f"starting Ray ({cpus} logical CPUs) and Serve: HTTP {self.url}, gRPC {self.grpc_target} ...")
        start_local(
            port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            num_cpus=cpus,
            object_store_mb=256,
            config=config,
        )
        try:
            deploy(config, args_override={"repository": str(repository_path), "models": models})
            wait_ready(self.url)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def run_served(args, url, grpc_target, metrics_url, models, images) -> tuple[list[dict], dict[str, Any]]:
    points = [
        closed_loop.PointSpec(protocol, model, c)
        for model in models
        for protocol in args.protocols
        for c in args.concurrency
    ]
    before = _scrape(metrics_url)
    served = closed_loop.measure(
        points,
        images,
        url=url,
        grpc_target=grpc_target,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
        seed=args.seed,
        verify_png=args.verify_png,
        log=log,
    )
    if args.metrics_settle_s > 0:
        log(f"waiting {args.metrics_settle_s:g} s for Ray's metrics export ...")
        time.sleep(args.metrics_settle_s)
    after = _scrape(metrics_url)
    metrics: dict[str, Any] = {"url": metrics_url}
    if before is not None and after is not None:
        hist = promparse.delta(before, after)
        metrics["histograms"] = hist
        metrics["mean_batch_size"] = promparse.mean_batch_sizes(hist)
    else:
        metrics["error"] = "metrics endpoint not readable"
    return served, metrics


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
