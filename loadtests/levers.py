"""The request path's levers, one at a time, in one run: what each costs in CPU per request and gives in
requests per second (docs/benchmark.md, "Levers").

    python loadtests/levers.py                                  # every lever, ~2 min each
    python loadtests/levers.py --levers fused-python,fused-haproxy --duration-s 10

Each lever is a configuration of our service (topology, Ray Serve environment switches, Serve's
logging config); each starts its own Ray and Serve in a subprocess (Ray Serve reads its switches from
the environment when its processes start), with a null model (near-zero forward: the serving overhead)
and unet-shapes, and measures a closed loop at one concurrency over HTTP (the label-map PNG body) and
gRPC with the CPU each process spent (``proc_cpu``), after 10 s without load that measure the session's
idle CPU. The levers after ``fused-haproxy`` (the shipped configuration) add to it in the order listed;
the first two show where we came from, and ``ray-idle-defaults`` is the shipped one with Ray's own
defaults for the two idle switches of ``service.local.LOCAL_ONLY_ENV``, ``no-borrowing`` the shipped one
with no model borrowing idle cores (``deployment.borrow_idle_cores``, ``service/cores.py``),
``throughput-optimized`` the shipped one with everything ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` switches,
``one-replica*`` the shipped one with one ingress replica instead of two, and the ``split-*`` levers the
GPU layout's path (its three handle calls per request) with Ray Serve's switches for handle calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name -> (description, app args, environment, Serve logging config changes); later levers include the
# earlier ones from "fused-haproxy" on (the shipped configuration is "fused-haproxy").
PYTHON_PROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
# App args replace the shipped ``ingress`` section whole, so it is written out: one replica, one CPU.
ONE_INGRESS_REPLICA = {"ingress": {"num_replicas": 1, "num_cpus": 1, "torch_threads": 1}}
LEVERS: dict[str, tuple[str, dict, dict, dict]] = {
    "split-python": (
        "split topology (ingress -> codec -> segmenter -> codec), Ray's Python proxies",
        {"topology": "split"},
        PYTHON_PROXY,
        {},
    ),
    "fused-python": ("fused topology (the ingress runs the models), Python proxies", {}, PYTHON_PROXY, {}),
    "fused-haproxy": ("+ HAProxy and direct ingress (shipped)", {}, {}, {}),
    "ray-idle-defaults": (
        "shipped, with Ray's prestarted workers and 0.1 s controller step (LOCAL_ONLY_ENV's idle switches)",
        {},
        {"RAY_num_workers_soft_limit": "-1", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"},
        {},
    ),
    "user-code-on-loop": (
        "+ user code on the replica's own event loop",
        {},
        {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
        {},
    ),
    "buffered-logs": (
        "+ request-path logs buffered",
        {},
        {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"},
        {},
    ),
    "no-haproxy-metrics": (
        "+ HAProxy's per-request log to Ray's metrics off",
        {},
        {"RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"},
        {},
    ),
    "haproxy-one-thread": ("+ HAProxy on one thread", {}, {"RAY_SERVE_HAPROXY_NBTHREAD": "1"}, {}),
    "no-borrowing": ("shipped, with no model borrowing idle cores (borrow_idle_cores: false)", {}, {}, {}),
    "throughput-optimized": (
        "shipped, with everything RAY_SERVE_THROUGHPUT_OPTIMIZED=1 switches",
        {},
        {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
        {},
    ),
    # The GPU layout (split topology) behind HAProxy, and its handle calls' two switches.
    "split-haproxy": (
        "split topology (the GPU layout), HAProxy and direct ingress; handle calls of <= 2 MiB by value",
        {"topology": "split"},
        {},
        {},
    ),
    "split-grpc-handles": (
        "split topology, every handle call over gRPC (RAY_SERVE_USE_GRPC_BY_DEFAULT=1)",
        {"topology": "split"},
        {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"},
        {},
    ),
    "split-router-on-loop": (
        "split topology, the handles' router on the replica's event loop",
        {"topology": "split"},
        {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
        {},
    ),
    # CPU layout: one ingress replica running the models instead of the shipped two.
    "one-replica": (
        "shipped, one ingress replica (one torch thread), no model borrowing idle cores",
        ONE_INGRESS_REPLICA,
        {},
        {},
    ),
    "one-replica-borrowing": (
        "shipped, one ingress replica, its forwards borrowing the idle core",
        ONE_INGRESS_REPLICA,
        {},
        {},
    ),
}
CUMULATIVE_FROM = "fused-haproxy"
STANDALONE = (
    "split-python",
    "fused-python",
    "ray-idle-defaults",
    "no-borrowing",
    "throughput-optimized",
    "split-haproxy",
    "split-grpc-handles",
    "split-router-on-loop",
    "one-replica",
    "one-replica-borrowing",
)
# Levers that change the models' repository entries: lever -> keys set in every entry's ``deployment``.
DEPLOYMENT_CHANGES: dict[str, dict[str, Any]] = {
    "no-borrowing": {"borrow_idle_cores": False},
    "one-replica": {"borrow_idle_cores": False},
}


def configuration(name: str) -> tuple[dict, dict, dict]:
    """(app args, environment, logging changes) of lever ``name``, with the levers before it."""
    order = [lever for lever in LEVERS if lever not in STANDALONE]
    chain = order[order.index(CUMULATIVE_FROM) : order.index(name) + 1] if name in order else [name]
    app, env, logging_changes = {}, {}, {}
    for lever in chain:
        _, a, e, lc = LEVERS[lever]
        app, env, logging_changes = {**app, **a}, {**env, **e}, {**logging_changes, **lc}
    return app, env, logging_changes


def measure_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """In this process: start the service configured as lever ``name`` and measure its points."""
    from loadtests import closed_loop, proc_cpu
    from loadtests.common import DEFAULT_REPOSITORY
    from loadtests.images import make_images
    from loadtests.local_service import LocalService
    from loadtests.repository import edit_repository, write_repository

    app, env, logging_changes = configuration(name)
    os.environ.update(env)  # before Ray starts: every Ray process inherits it
    tmp = ROOT / "loadtests" / "results" / "tmp" / f"levers-{os.getpid()}"
    repository, null = write_repository(DEFAULT_REPOSITORY, [args.model], True, tmp)
    if name in DEPLOYMENT_CHANGES:
        edit_repository(repository, lambda entries: _change_deployments(entries, DEPLOYMENT_CHANGES[name]))
    service = LocalService(repository, [args.model, null], None, app, logging_changes)
    images = make_images((256, 256), seed=0, synthetic=8)
    roles = proc_cpu.Roles(outside_by_name=False)
    idle = proc_cpu.idle_ms_per_s(roles)  # the session's fixed cost, before any request
    points = [
        closed_loop.PointSpec(p, m, args.concurrency) for m in (null, args.model) for p in args.protocols
    ]
    try:
        rows = closed_loop.measure(
            points,
            images,
            url=service.url,
            grpc_target=service.grpc_target,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            timeout_s=60,
            roles=roles,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        service.stop()
    return {
        "lever": name,
        "idle_ms_per_s": proc_cpu.service_ms(idle),
        "points": [
            {
                "model": "null" if r["model"] == null else r["model"],
                "protocol": r["protocol"],
                "rps": round(r["throughput_rps"], 1),
                "p50_ms": r["p50_ms"],
                "errors": r["errors"],
                "service_cpu_ms": proc_cpu.service_ms(r["cpu_ms_per_request"]),
                "cpu_ms_per_request": r["cpu_ms_per_request"],
            }
            for r in rows
        ],
    }


def _change_deployments(entries: list[dict[str, Any]], changes: dict[str, Any]) -> None:
    for entry in entries:
        entry["deployment"] = {**entry.get("deployment", {}), **changes}


def table(results: list[dict[str, Any]], model: str, protocols: list[str]) -> list[str]:
    head = " | ".join(f"{model} {p} req/s | CPU ms/req" for p in protocols)
    lines = [f"| lever | idle CPU ms/s | {head} |", "|---|" + "---:|" * (1 + 2 * len(protocols))]
    for result in results:
        cells = []
        for protocol in protocols:
            point = next(
                (p for p in result["points"] if p["model"] == model and p["protocol"] == protocol), None
            )
            cpu = point and point["service_cpu_ms"]
            cells += [f"{point['rps']:.1f}" if point else "-", f"{cpu:.1f}" if cpu else "-"]
        idle = result.get("idle_ms_per_s")
        cells = [f"{idle:.0f}" if idle else "-", *cells]
        lines.append(f"| {result['lever']}: {LEVERS[result['lever']][0]} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levers", default=",".join(LEVERS), help=f"some of {', '.join(LEVERS)}")
    p.add_argument("--model", default="unet-shapes")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument("--warmup-s", type=float, default=4.0)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the subprocess's lever
    p.add_argument("--out", type=Path, default=None, help="also write the JSON results here")
    args = p.parse_args(argv)
    args.protocols = [x for x in args.protocols.split(",") if x]
    if args.one:
        print(json.dumps(measure_one(args.one, args)), flush=True)
        return 0
    results = []
    for name in [x for x in args.levers.split(",") if x]:
        if name not in LEVERS:
            p.error(f"unknown lever {name!r}; known: {', '.join(LEVERS)}")
        started = time.monotonic()
        command = [sys.executable, __file__, "--one", name, *(argv or sys.argv[1:])]
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"lever {name}: failed (exit {done.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1]))
        print(f"lever {name}: done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    for model in ("null", args.model):
        print("\n".join(["", *table(results, model, args.protocols)]))
    return 0 if len(results) == len(args.levers.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
