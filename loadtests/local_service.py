"""Our service for the benchmark: Ray and Serve on free ports with the temporary repository
(``service.local.start_local`` + ``deploy``), stopped at the end."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from loadtests.common import log
from service.local import free_port


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


def wait_ready(url: str, timeout_s: float = 180, path: str = "/readyz") -> None:
    """Until ``GET url+path`` answers 200; a RuntimeError with the last answer after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}{path}", timeout=10)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s: {last}")


class LocalService:
    """Ray + Serve on free ports with the temporary repository; ``stop()`` shuts both down."""

    def __init__(
        self,
        repository_path: Path,
        models: list[str],
        num_cpus: float | None,
        app_args: dict[str, Any] | None = None,
        logging_config: dict[str, Any] | None = None,
    ) -> None:
        """``app_args`` override the shipped config's application args (e.g. ``topology``),
        ``logging_config`` its Serve logging settings (e.g. ``enable_access_log``)."""
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from service.local import deploy, load_serve_config, start_local

        config = load_serve_config()
        config["logging_config"] = {**config.get("logging_config", {}), **(logging_config or {})}
        app_args = {**config["applications"][0].get("args", {}), **(app_args or {})}
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
            deploy(config, args_override={**app_args, "repository": str(repository_path), "models": models})
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
