"""Run the service on a local Ray (``make serve`` / ``segserve serve``) and in tests."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "serve_config.yaml"


def load_serve_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def start_local(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int = 9000,
    metrics_port: int | None = 8080,
    num_cpus: float | None = None,
    object_store_mb: int = 256,
    config: dict[str, Any] | None = None,
) -> None:
    """Start Ray and Serve's HTTP and gRPC proxies with the options of the serve config."""
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    config = config or load_serve_config()
    init_kwargs: dict[str, Any] = {
        # Logical CPUs are scheduling tokens here: every replica sets its own torch threads, and the
        # shipped app asks for 4.25 (two models x two 1-CPU segmenter replicas, the ingress's 0.25),
        # more than a 2-core laptop has.
        "num_cpus": num_cpus or max(8, os.cpu_count() or 2),
        "include_dashboard": False,
        "object_store_memory": object_store_mb * 1024 * 1024,
        "log_to_driver": False,
        # Replicas import `service` from the working tree, like the driver.
        "runtime_env": {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
    }
    if metrics_port:
        init_kwargs["_metrics_export_port"] = metrics_port
    ray.init(**init_kwargs)
    http = {**config.get("http_options", {}), "host": host, "port": port}
    grpc = config.get("grpc_options", {})
    serve.start(
        http_options=http,
        grpc_options=gRPCOptions(
            port=grpc_port, grpc_servicer_functions=grpc.get("grpc_servicer_functions", [])
        ),
        logging_config=config.get("logging_config"),
    )


def deploy(config: dict[str, Any] | None = None, args_override: dict[str, Any] | None = None) -> str:
    """serve.run the configured application; returns its name."""
    from ray import serve

    from service.app import build_app

    config = config or load_serve_config()
    app = config["applications"][0]
    args = {**app.get("args", {}), **(args_override or {})}
    serve.run(
        build_app(args),
        name=app["name"],
        route_prefix=app.get("route_prefix", "/"),
        logging_config=config.get("logging_config"),  # JSON lines, as in the cluster config
    )
    return app["name"]


def serve_forever(host: str, port: int, grpc_port: int, metrics_port: int) -> None:
    import ray
    from ray import serve

    print(
        f"starting Ray and Serve (HTTP {host}:{port}, gRPC {host}:{grpc_port}, metrics :{metrics_port}) ..."
    )
    try:
        start_local(host=host, port=port, grpc_port=grpc_port, metrics_port=metrics_port)
        deploy()
    except KeyboardInterrupt:
        print("interrupted while starting; shutting down ...", flush=True)
        serve.shutdown()
        ray.shutdown()
        return
    base = f"http://{host}:{port}"
    print(
        f"\nsegserve is ready.\n"
        f"  HTTP     {base}   (models: curl {base}/v1/models)\n"
        f"  gRPC     {host}:{grpc_port}   (segmentation.v1.Segmentation)\n"
        f"  metrics  http://{host}:{metrics_port}/metrics\n\n"
        f"Try:\n"
        f"  curl -s --data-binary @docs/examples/shapes.png -H 'Content-Type: image/png' \\\n"
        f"       '{base}/v1/models/unet-shapes/segment?overlay=true' | head -c 600\n\n"
        f"Ctrl-C stops it.\n",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    print("shutting down ...", flush=True)
    serve.shutdown()
    ray.shutdown()
