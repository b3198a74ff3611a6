"""A closed-loop load generator (asyncio) with exact percentiles: HTTP (httpx) and gRPC (grpc.aio).

``concurrency`` workers each send one request, wait for the answer, and send the next, for
``warmup_s + duration_s``. Only answers that *complete* inside the measurement window
``[start + warmup_s, start + warmup_s + duration_s]`` count: throughput is their number over
``duration_s``, and latencies are theirs (exact percentiles, linear interpolation). Requests still in
flight at the end are waited for (up to ``drain_s``) and not counted. Inputs are a seeded shuffle
of the image list, each worker starting at its own offset.

HTTP uses one ``httpx.AsyncClient`` (HTTP/1.1 keep-alive, a pool of ``concurrency`` connections);
gRPC one ``grpc.aio`` channel (HTTP/2 streams). Answers are checked (200 / OK, model, size, a PNG
mask; ``verify_png`` also decodes the PNG, which costs client CPU at high rates).
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
from loadtests.common import STAGES, Checked, TestImage, check_grpc_answer, check_http_answer

SERVER_STAGES = tuple(s for s in STAGES if s != "total")


@dataclass(frozen=True)
class PointSpec:
    protocol: str  # "http" | "grpc"
    model: str
    concurrency: int


class HttpSender:
    def __init__(
        self, url: str, concurrency: int, timeout_s: float, verify_png: bool = False, transport: Any = None
    ) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s, transport=transport)
        self.verify_png = verify_png

    async def send(self, model: str, image: TestImage) -> Checked:
        try:
            response = await self.client.post(
                f"/v1/models/{model}/segment",
                content=image.data,
                headers={"content-type": image.content_type, "accept": "application/json"},
            )
        except self._httpx.HTTPError as e:
            return Checked(f"{type(e).__name__}", {})
        return check_http_answer(response.status_code, response.content, image, model, self.verify_png)

    async def aclose(self) -> None:
        await self.client.aclose()


class GrpcSender:
    def __init__(self, target: str, timeout_s: float, verify_png: bool = False) -> None:
        import grpc
        from segserve_client.grpc import channel_options

        from service.generated.segmentation.v1 import segmentation_pb2 as pb
        from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

        self._grpc = grpc
        self._pb = pb
        self.channel = grpc.aio.insecure_channel(target, options=channel_options())
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.timeout_s = timeout_s
        # Ray's gRPC proxy does not forward grpc-timeout; the service reads x-timeout-ms.
        self.metadata = (("x-timeout-ms", str(int(timeout_s * 1000))),)
        self.verify_png = verify_png

    async def send(self, model: str, image: TestImage) -> Checked:
        pb = self._pb
        request = pb.SegmentRequest(
            model=model, image=image.data, content_type=image.content_type, format=pb.MASK_FORMAT_PNG
        )
        try:
            response = await self.stub.Segment(request, timeout=self.timeout_s, metadata=self.metadata)
        except self._grpc.aio.AioRpcError as e:
            return Checked(f"gRPC {e.code().name}", {})
        return check_grpc_answer(response, image, model, self.verify_png)

    async def aclose(self) -> None:
        await self.channel.close()


@dataclass
class _Sample:
    start: float
    end: float
    checked: Checked


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    import psutil

    t = psutil.cpu_times()
    total = sum(t)
    return total - t.idle - getattr(t, "iowait", 0.0), total


async def run_point(
    sender: Any,
    model: str,
    images: Sequence[TestImage],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    seed: int = 0,
    drain_s: float = 60.0,
) -> dict[str, Any]:
    """One closed-loop measurement point; returns its statistics (see ``summarize``)."""
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    samples: list[_Sample] = []
    begin = time.perf_counter()
    window_start = begin + warmup_s
    window_end = window_start + duration_s

    async def worker(i: int) -> None:
        k = (i * len(order)) // concurrency  # spread the workers over the shuffled inputs
        while time.perf_counter() < window_end:
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

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    busy0, total0 = _cpu_busy()
    procs0 = await asyncio.to_thread(proc_cpu.snapshot)  # in a thread: the senders keep sending
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    busy1, total1 = _cpu_busy()
    procs1 = await asyncio.to_thread(proc_cpu.snapshot)
    _done, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    window = [s for s in samples if window_start <= s.end <= window_end]
    result = summarize(window, duration_s)
    result["client_cpu_fraction"] = (cpu1 - cpu0) / max(wall1 - wall0, 1e-9)
    result["machine_cpu_busy_fraction"] = (busy1 - busy0) / max(total1 - total0, 1e-9)
    result["in_flight_at_end"] = len(pending)
    # CPU per completed request by process role (proxies, Ingress, Segmenter-<model>, ...): only
    # meaningful when the service runs on this machine.
    result["cpu_ms_per_request"] = proc_cpu.per_request_ms(proc_cpu.cpu_by_role(procs0, procs1), len(window))
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


def summarize(window: list[_Sample], duration_s: float) -> dict[str, Any]:
    ok = [s for s in window if s.checked.reason is None]
    failed = Counter(s.checked.reason for s in window if s.checked.reason is not None)
    latencies = [(s.end - s.start) * 1000 for s in ok]
    stage_means: dict[str, float] = {}
    for stage in STAGES:
        values = [s.checked.timings_ms[stage] for s in ok if stage in s.checked.timings_ms]
        if values:
            stage_means[stage] = statistics.fmean(values)
    if "total" in stage_means:
        inside = sum(stage_means.get(s, 0.0) for s in SERVER_STAGES)
        # Between the stages: handle calls between deployments, object store, scheduling.
        stage_means["hops"] = stage_means["total"] - inside
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
        **_percentiles(latencies),
        "stage_mean_ms": stage_means,
        # Client latency minus the ingress' own total: proxy, HTTP/gRPC framing, (de)serialization.
        "outside_server_ms": statistics.fmean(with_total) if with_total else None,
        # A batch of b answers b requests: the mean over batches is the harmonic mean over requests.
        "mean_batch_size": len(batches) / sum(1 / b for b in batches) if batches else None,
        "request_mean_batch_size": statistics.fmean(batches) if batches else None,
    }


async def _run_all(
    points: Sequence[PointSpec],
    images: Sequence[TestImage],
    url: str | None,
    grpc_target: str | None,
    warmup_s: float,
    duration_s: float,
    timeout_s: float,
    seed: int,
    verify_png: bool,
    http_transport: Any,
    log,
) -> list[dict[str, Any]]:
    results = []
    for i, point in enumerate(points):
        if point.protocol == "http":
            if not url:
                raise ValueError("an HTTP point needs url")
            sender: Any = HttpSender(url, point.concurrency, timeout_s, verify_png, http_transport)
        elif point.protocol == "grpc":
            if not grpc_target:
                raise ValueError("a gRPC point needs grpc_target")
            sender = GrpcSender(grpc_target, timeout_s, verify_png)
        else:
            raise ValueError(f"unknown protocol {point.protocol!r}")
        try:
            stats = await run_point(
                sender,
                point.model,
                images,
                point.concurrency,
                warmup_s,
                duration_s,
                seed=seed + i,
                drain_s=timeout_s,
            )
        finally:
            await sender.aclose()
        row = {
            "protocol": point.protocol,
            "model": point.model,
            "concurrency": point.concurrency,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            **stats,
        }
        log(
            f"  {point.protocol:4} {point.model:16} c={point.concurrency:<3} "
            f"{row['throughput_rps']:7.2f} req/s  p50 {_ms(row['p50_ms'])}  p99 {_ms(row['p99_ms'])}"
            f"  errors {row['errors']}"
        )
        results.append(row)
    return results


def _ms(value: float | None) -> str:
    return f"{value:8.1f} ms" if value is not None else "       - ms"


def measure(
    points: Sequence[PointSpec],
    images: Sequence[TestImage],
    *,
    url: str | None = None,
    grpc_target: str | None = None,
    warmup_s: float = 5.0,
    duration_s: float = 20.0,
    timeout_s: float = 60.0,
    seed: int = 0,
    verify_png: bool = False,
    http_transport: Any = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run the points one after the other in one event loop; one result dict per point."""
    return asyncio.run(
        _run_all(
            points,
            images,
            url,
            grpc_target,
            warmup_s,
            duration_s,
            timeout_s,
            seed,
            verify_png,
            http_transport,
            log,
        )
    )
