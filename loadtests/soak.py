"""The soak (``make soak``): a long mixed load, and whether the service grows while it runs.

    python loadtests/soak.py --minutes 20                 # starts its own segserve serve (free ports)
    python loadtests/soak.py --minutes 60 --url http://127.0.0.1:8000 --grpc-target 127.0.0.1:9000 \\
        --metrics-url http://127.0.0.1:8080/metrics       # a running service (on this machine for
                                                          # the per-process figures)

The load (``soak_load.py``): every kind of request the service takes, bad ones and ones the client
gives up on included, from ``--concurrency`` closed-loop workers. After ``--warmup-s`` it samples every
``--interval-s`` (``soak_sample.py``): per process of the service's session RSS, file descriptors and
threads; the object store; the series of a metrics scrape; the number of processes. Each must grow by
less than its bound per 1,000 requests (``BOUNDS``: the figures and their reasons are in
docs/operations.md, "Long runs"), every answer must be a status documented for its request, and at
least ``MIN_SERVED`` of the segment requests must be served. A service the soak started is stopped at
the end with a Ctrl-C, which must end every process of its session and free its ports.

Writes ``<out>/soak-<time>.json`` and ``.md``; exit status 0 when everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests import soak_load, soak_report  # noqa: E402
from loadtests.common import TMP_DIR, log  # noqa: E402
from loadtests.soak_sample import Bound, Sampler, analyse, grown_families  # noqa: E402

# Growth allowed per 1,000 requests after warm-up, for a run of 20 minutes or more (~20,000 requests on
# the 2-core machine). Measured in a 20-minute run with nothing leaking (docs/operations.md, "Long
# runs"): RSS floor at most +1.1 MB (an Ingress replica; every other process under +0.1; +1.96 in a later
# run on four models), fds, threads,
# processes and the object store 0, metric series +1.1 (Ray's own label sets appearing late). Each
# bound is about 4x the worst measured value, or a small count where the measurement was 0.
BOUNDS: dict[str, Bound] = {
    "rss_mb": Bound(4.0, "measured <= 1.1, then 1.96 (4 models); catches a leak of >= 4 kB per request"),
    "fds": Bound(2.0, "measured 0; catches one descriptor kept per 500 requests"),
    "threads": Bound(1.0, "measured 0; catches one thread kept per 1,000 requests"),
    "plasma_mb": Bound(1.0, "measured 0; one label map kept per request would be ~64 MB"),
    "plasma_objects": Bound(1.0, "measured 0; catches one object kept per 1,000 requests"),
    "heap_mb": Bound(1.0, "measured 0; catches >= 1 kB per request in the in-process stores"),
    "series": Bound(10.0, "measured 1.1; one label value per request adds >= 1,000"),
    "processes": Bound(0.5, "measured 0; catches a process started and kept per 2,000 requests"),
}
MIN_SERVED = 0.95
"""Share of segment requests answered 200 / OK (the rest may be the documented 503 / 504)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 20)))
    p.add_argument("--warmup-s", type=float, default=30.0, help="load before sampling counts")
    p.add_argument("--interval-s", type=float, default=3.0, help="between samples")
    p.add_argument("--concurrency", type=int, default=6, help="closed-loop workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url", default="", help="a running service (default: start one)")
    p.add_argument("--grpc-target", default="", help="with --url: its gRPC host:port")
    p.add_argument("--metrics-url", default="", help="with --url: its metrics endpoint")
    p.add_argument("--out", default=str(TMP_DIR), help="where the report goes")
    p.add_argument("--echo", action="store_true", help="show the started service's output")
    args = p.parse_args(argv)
    if args.url and not (args.grpc_target and args.metrics_url):
        p.error("--url needs --grpc-target and --metrics-url")
    if args.minutes * 60 <= args.warmup_s + 3 * args.interval_s:
        p.error("--minutes must leave at least three samples after --warmup-s")
    return args


async def run_load(load: soak_load.Load, args, sampler: Sampler | None) -> dict[str, Any]:
    """The workers for ``--minutes``; the sampler's thread alongside."""
    done = 0

    def on_done() -> None:
        nonlocal done
        done += 1

    started = time.monotonic()
    stop, stop_sampling = asyncio.Event(), threading.Event()
    thread = None
    if sampler is not None:
        thread = threading.Thread(
            target=sampler.run, args=(lambda: done, started, stop_sampling), daemon=True
        )
        thread.start()
    mix = soak_load.kinds()
    await soak_load.cover(load, mix, random.Random(args.seed), on_done)
    covered_s = time.monotonic() - started
    tasks = [
        asyncio.create_task(soak_load.worker(load, mix, args.seed * 1000 + k, stop, on_done))
        for k in range(args.concurrency)
    ]
    await asyncio.sleep(args.minutes * 60)
    stop.set()
    stop_sampling.set()
    await asyncio.wait(tasks, timeout=load.timeout_s + 5)
    if thread is not None:
        thread.join(30)
    return {"requests": done, "elapsed_s": time.monotonic() - started, "covered_s": covered_s}


def served_models(url: str) -> dict[str, str]:
    import httpx

    answer = httpx.get(f"{url}/v1/models", timeout=30).json()
    return {m["name"]: m["task"] for m in answer["models"]}


def session_of(url: str) -> int | None:
    """The session of the process that listens on the URL's port here (None: not on this machine)."""
    from urllib.parse import urlsplit

    from service.lifecycle.processes import listeners, sid_of

    pids = listeners(urlsplit(url).port or 80)
    return sid_of(pids[0]) if pids else None


def soak(
    args, url: str, grpc_target: str, metrics_url: str, sid: int | None, extra: list[int], bounds: dict
) -> dict:
    models = served_models(url)
    log(f"soak: {args.minutes:g} min, {args.concurrency} workers, models {models}, sampling session {sid}")
    sampler = Sampler(sid, extra, metrics_url, args.interval_s) if sid else None
    counts = {}

    async def main() -> dict:
        load = soak_load.Load(url, grpc_target, models)  # in the loop: gRPC's aio channel binds to it
        try:
            return await run_load(load, args, sampler)
        finally:
            counts.update(load.counts)
            await load.aclose()

    run = asyncio.run(main())
    warm = max(args.warmup_s, run["covered_s"])
    samples = [s for s in (sampler.samples if sampler else []) if s.t >= warm]
    series, changed = analyse(samples, bounds) if sampler else ([], [])
    return {
        "args": vars(args),
        "models": models,
        "run": run,
        "outcomes": soak_report.outcome_rows(Counter(counts), soak_load.kinds()),
        "series": series,
        "changed_processes": changed,
        "grown_families": grown_families(samples[0], samples[-1]) if len(samples) > 1 else {},
        "sampler_errors": sampler.errors if sampler else [],
        "samples": [s.__dict__ for s in (sampler.samples if sampler else [])],
        "bounds": {k: b.__dict__ for k, b in bounds.items()},
    }


def stop_service(service) -> dict[str, Any]:
    """Ctrl-C to the service the soak started: it must end every process of its session, free the ports."""
    started = time.monotonic()
    service.signal_group(signal.SIGINT)
    took, code = service.wait_stopped(120)
    return {
        "took_s": took,
        "exit_status": code,
        "processes_left": service.session(),
        "ports_in_use": service.ports_in_use(),
        "wall_s": time.monotonic() - started,
    }


def main(argv: list[str] | None = None, bounds: dict[str, Bound] | None = None) -> int:
    """``bounds``: the slopes allowed per 1,000 requests (default ``BOUNDS``; the CI test has its own)."""
    args = parse_args(argv)
    service = None
    if args.url:
        url, grpc_target, metrics_url = args.url.rstrip("/"), args.grpc_target, args.metrics_url
        sid, extra = session_of(url), []
    else:
        from loadtests.serve_process import ServeProcess

        service = ServeProcess(echo=args.echo)
        try:
            log(f"soak: started segserve serve in {service.wait_ready():.0f} s")
        except BaseException:
            service.kill()
            raise
        url, grpc_target, metrics_url = service.url, service.grpc_target, service.metrics_url
        sid, extra = service.sid, [service.proc.pid]
    try:
        results = soak(args, url, grpc_target, metrics_url, sid, extra, bounds or BOUNDS)
    finally:
        if service is not None:
            stop = stop_service(service)
            if service.session():
                service.kill()
    if service is not None:
        results["stop"] = stop
    results["verdict"] = soak_report.verdict(results, MIN_SERVED)
    paths = soak_report.write(results, Path(args.out))
    log(soak_report.summary(results))
    log("written: " + ", ".join(str(p) for p in paths))
    return 0 if not results["verdict"] else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
