"""A closed-loop load generator (asyncio) with exact percentiles, over HTTP and gRPC (``senders.py``).

``concurrency`` workers each send one request, wait for the answer, and send the next, for
``warmup_s + duration_s``. Only answers that *complete* inside the measurement window
``[start + warmup_s, start + warmup_s + duration_s]`` count: throughput is their number over
``duration_s``, and latencies are theirs (exact percentiles, linear interpolation). Requests still in
flight at the end are waited for (up to ``drain_s``) and not counted. Inputs are a seeded shuffle
of the image list, each worker starting at its own offset. Answers are checked (200 / OK, model,
size, a PNG mask; ``verify_png`` also decodes the PNG, which costs client CPU at high rates).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtests import proc_cpu
from loadtests.checks import Checked
from loadtests.common import STAGES
from loadtests.images import TestImage
from loadtests.senders import GrpcSender, HttpSender

SERVER_STAGES = tuple(s for s in STAGES if s != "total")
PROTOCOLS = ("http", "http-json", "grpc")
HTTP_ACCEPT = {"http": "png", "http-json": "json"}  # what an HTTP line asks for (senders.ACCEPT)


@dataclass(frozen=True)
class PointSpec:
    protocol: str  # "http" (the label-map PNG as the body), "http-json" (ours' JSON answer), "grpc"
    model: str
    concurrency: int


@dataclass(frozen=True)
class LoadConfig:
    url: str | None = None
    grpc_target: str | None = None
    warmup_s: float = 5.0
    duration_s: float = 20.0
    timeout_s: float = 60.0
    seed: int = 0
    verify_png: bool = False
    http_transport: Any = None
    roles: proc_cpu.Roles | None = None  # whose processes are whose, for the CPU by role


@dataclass
class _Sample:
    start: float
    end: float
    checked: Checked


async def _worker(sender, model: str, images, order: list[int], k: int, end: float, samples: list) -> None:
    while time.perf_counter() < end:
        image = images[order[k % len(order)]]
        k += 1
        t0 = time.perf_counter()
        try:
            checked = await sender.send(model, image)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a client-side error is a failed request, not a crash
            checked = Checked(f"client {type(e).__name__}", {})
        samples.append(_Sample(t0, time.perf_counter(), checked))


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    import psutil

    t = psutil.cpu_times()
    total = sum(t)
    return total - t.idle - getattr(t, "iowait", 0.0), total


async def _usage(start: float, end: float, roles: proc_cpu.Roles | None) -> dict[str, Any]:
    """Sleeps through the window; this process's, the machine's and each role's CPU in it."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    cpu0, wall0, machine0 = time.process_time(), time.perf_counter(), _cpu_busy()
    procs0 = await asyncio.to_thread(proc_cpu.snapshot, roles)  # in a thread: the senders keep sending
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu1, wall1, machine1 = time.process_time(), time.perf_counter(), _cpu_busy()
    procs1 = await asyncio.to_thread(proc_cpu.snapshot, roles)
    return {
        "client_cpu_fraction": (cpu1 - cpu0) / max(wall1 - wall0, 1e-9),
        "machine_cpu_busy_fraction": (machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1e-9),
        "cpu_s_by_role": proc_cpu.cpu_by_role(procs0, procs1),
    }


async def run_point(
    sender: Any,
    model: str,
    images: Sequence[TestImage],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    seed: int = 0,
    drain_s: float = 60.0,
    roles: proc_cpu.Roles | None = None,
) -> dict[str, Any]:
    """One closed-loop measurement point; returns its statistics (see ``summarize``)."""
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    samples: list[_Sample] = []
    start = time.perf_counter() + warmup_s
    end = start + duration_s
    offsets = [(i * len(order)) // concurrency for i in range(concurrency)]  # spread over the inputs
    tasks = [asyncio.create_task(_worker(sender, model, images, order, k, end, samples)) for k in offsets]
    usage = await _usage(start, end, roles)
    _done, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    window = [s for s in samples if start <= s.end <= end]
    result = summarize(window, duration_s)
    result["client_cpu_fraction"] = usage["client_cpu_fraction"]
    result["machine_cpu_busy_fraction"] = usage["machine_cpu_busy_fraction"]
    result["in_flight_at_end"] = len(pending)
    # CPU per completed request by process role (proxies, Ingress, Segmenter-<model>, a peer's
    # processes, ...): only meaningful when the system under test runs on this machine.
    result["cpu_ms_per_request"] = proc_cpu.per_request_ms(usage["cpu_s_by_role"], len(window))
    return result


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    a = np.asarray(values)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "max_ms": float(a.max()),
    }


def _stage_means(ok: list[_Sample]) -> dict[str, float]:
    means: dict[str, float] = {}
    for stage in STAGES:
        values = [s.checked.timings_ms[stage] for s in ok if stage in s.checked.timings_ms]
        if values:
            means[stage] = statistics.fmean(values)
    if "total" in means:
        # Between the stages: handle calls between deployments, object store, scheduling.
        means["hops"] = means["total"] - sum(means.get(s, 0.0) for s in SERVER_STAGES)
    return means


def summarize(window: list[_Sample], duration_s: float) -> dict[str, Any]:
    ok = [s for s in window if s.checked.reason is None]
    failed = Counter(s.checked.reason for s in window if s.checked.reason is not None)
    with_total = [
        (s.end - s.start) * 1000 - s.checked.timings_ms["total"]
        for s in ok
        if "total" in s.checked.timings_ms
    ]
    batches = [s.checked.batch_size for s in ok if s.checked.batch_size > 0]
    return {
        "requests": len(ok),
        "errors": sum(failed.values()),
        "error_reasons": dict(failed),
        "throughput_rps": len(ok) / duration_s if duration_s > 0 else 0.0,
        **_percentiles([(s.end - s.start) * 1000 for s in ok]),
        "stage_mean_ms": _stage_means(ok),
        # Client latency minus the ingress' own total: proxy, HTTP/gRPC framing, (de)serialization.
        "outside_server_ms": statistics.fmean(with_total) if with_total else None,
        # A batch of b answers b requests: the mean over batches is the harmonic mean over requests.
        "mean_batch_size": len(batches) / sum(1 / b for b in batches) if batches else None,
        "request_mean_batch_size": statistics.fmean(batches) if batches else None,
    }


def make_sender(point: PointSpec, config: LoadConfig) -> Any:
    if point.protocol in HTTP_ACCEPT:
        if not config.url:
            raise ValueError("an HTTP point needs url")
        return HttpSender(
            config.url,
            point.concurrency,
            config.timeout_s,
            config.verify_png,
            config.http_transport,
            accept=HTTP_ACCEPT[point.protocol],
        )
    if point.protocol == "grpc":
        if not config.grpc_target:
            raise ValueError("a gRPC point needs grpc_target")
        return GrpcSender(config.grpc_target, config.timeout_s, config.verify_png)
    raise ValueError(f"unknown protocol {point.protocol!r}")


async def _measure_point(point: PointSpec, images, config: LoadConfig, seed: int) -> dict[str, Any]:
    sender = make_sender(point, config)
    try:
        stats = await run_point(
            sender,
            point.model,
            images,
            point.concurrency,
            config.warmup_s,
            config.duration_s,
            seed=seed,
            drain_s=config.timeout_s,
            roles=config.roles,
        )
    finally:
        await sender.aclose()
    head = {"protocol": point.protocol, "model": point.model, "concurrency": point.concurrency}
    return {**head, "duration_s": config.duration_s, "warmup_s": config.warmup_s, **stats}


async def _run_all(points: Sequence[PointSpec], images, config: LoadConfig, log) -> list[dict[str, Any]]:
    results = []
    for i, point in enumerate(points):
        row = await _measure_point(point, images, config, config.seed + i)
        log(
            f"  {point.protocol:9} {point.model:16} c={point.concurrency:<3} "
            f"{row['throughput_rps']:7.2f} req/s  p50 {_ms(row['p50_ms'])}  p99 {_ms(row['p99_ms'])}"
            f"  errors {row['errors']}"
        )
        results.append(row)
    return results


def _ms(value: float | None) -> str:
    return f"{value:8.1f} ms" if value is not None else "       - ms"


def measure(
    points: Sequence[PointSpec], images: Sequence[TestImage], *, log=print, **config: Any
) -> list[dict[str, Any]]:
    """Run the points one after the other in one event loop; one result dict per point.

    ``config``: the fields of ``LoadConfig`` (``url``, ``grpc_target``, ``warmup_s``, ``duration_s``, ...).
    """
    return asyncio.run(_run_all(points, images, LoadConfig(**config), log))
