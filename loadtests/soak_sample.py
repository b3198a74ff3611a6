"""What the soak samples, and the slopes it holds them to.

Per process of the service's Ray session (``getsid``: another Ray on the machine is never counted),
by role (``proc_cpu.role``: Ingress replicas, haproxy, proxies, controller, Ray's daemons; the service
process is ``driver``; the supervisor ``segserve serve``): RSS, open file descriptors, threads. From
the metrics endpoint: Ray's object store (plasma bytes in use and objects, the workers' in-process
stores) and the number of series in the scrape. And the session's process count.

A slope is the Theil-Sen estimate (the median of the pairwise slopes, robust to outliers) of a value
against the requests answered so far, per 1,000 requests; for RSS, of its running minimum (``floor``).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadtests.proc_cpu import role
from service.lifecycle.processes import SESSION_MODULE, session_pids

PROCESS_METRICS = ("rss_mb", "fds", "threads")
SESSION_METRICS = ("plasma_mb", "plasma_objects", "heap_mb", "series", "processes")


@dataclass
class Sample:
    t: float
    requests: int
    processes: dict[str, dict[str, float]]
    """``"<role> <pid>"`` -> {rss_mb, fds, threads}."""
    session: dict[str, float]
    """plasma_mb, plasma_objects, heap_mb, series, processes."""
    families: dict[str, int] = field(default_factory=dict)
    """Series per metric family: which ones grew."""


def process_role(name: str, cmdline: str) -> str:
    if SESSION_MODULE in cmdline:
        return "driver"
    if "service.cli serve" in cmdline:
        return "segserve serve"
    found = role(name, cmdline)
    return name if found in ("ray system", "other") else found  # Ray's daemons by their own names


def process_stats(pids: list[int]) -> dict[str, dict[str, float]]:
    out = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                key = f"{process_role(proc.name(), ' '.join(proc.cmdline())[:200])} {pid}"
                out[key] = {
                    "rss_mb": proc.memory_info().rss / 2**20,
                    "fds": float(proc.num_fds()),
                    "threads": float(proc.num_threads()),
                }
        except psutil.Error:
            continue
    return out


def scrape_stats(metrics_url: str) -> tuple[dict[str, float], dict[str, int]]:
    """Series in one scrape (and per family), and Ray's object store use (from the raylet's and the
    core workers' gauges)."""
    text = httpx.get(metrics_url, timeout=30).text
    series = plasma = objects = heap = 0.0
    families: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = len(family.samples)
        for s in family.samples:
            series += 1
            if s.name == "ray_object_store_used_memory":
                plasma += s.value
            elif s.name == "ray_object_store_num_local_objects":
                objects += s.value
            elif s.name == "ray_object_store_memory" and s.labels.get("Location") == "WORKER_HEAP":
                heap += s.value
    store = {"plasma_mb": plasma / 2**20, "plasma_objects": objects, "heap_mb": heap / 2**20}
    return {**store, "series": series}, families


def take(sid: int, extra_pids: list[int], metrics_url: str, requests: int, t: float) -> Sample:
    pids = session_pids(sid)
    session, families = scrape_stats(metrics_url)
    session["processes"] = float(len(pids))
    return Sample(t, requests, process_stats(pids + extra_pids), session, families)


def grown_families(first: Sample, last: Sample, top: int = 10) -> dict[str, int]:
    """The metric families whose series count grew most between two samples."""
    grown = {name: n - first.families.get(name, 0) for name, n in last.families.items()}
    return dict(sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1])[:top])


def floor(values: list[float], window: int = 5) -> list[float]:
    """The running minimum over ``window`` samples: what stays allocated between requests. A leak raises
    it; a large image in flight at one sample does not (RSS rose and fell by ~50 MB with them)."""
    return [min(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def theil_sen(xs: list[float], ys: list[float]) -> float | None:
    slopes = [
        (y2 - y1) / (x2 - x1)
        for (x1, y1), (x2, y2) in itertools.combinations(zip(xs, ys, strict=True), 2)
        if x2 > x1
    ]
    return statistics.median(slopes) if slopes else None


@dataclass(frozen=True)
class Bound:
    per_1000: float
    why: str


@dataclass
class Series:
    """One sampled quantity after warm-up: its values, slope and bound."""

    name: str
    metric: str
    first: float
    last: float
    slope: float | None
    bound: float
    samples: int
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = self.slope is not None and self.slope <= self.bound


def analyse(samples: list[Sample], bounds: dict[str, Bound]) -> tuple[list[Series], list[str]]:
    """Every process present in all samples, and the session's figures, against their bounds; and the
    processes that came or went (a replica restarted, a worker started) after warm-up."""
    if len(samples) < 3:
        raise ValueError(f"need at least 3 samples after warm-up, got {len(samples)}")
    xs = [s.requests / 1000 for s in samples]
    steady = set.intersection(*(set(s.processes) for s in samples))
    changed = sorted(set.union(*(set(s.processes) for s in samples)) - steady)
    out = []
    for key in sorted(steady):
        for metric in PROCESS_METRICS:
            ys = [s.processes[key][metric] for s in samples]
            if metric == "rss_mb":
                ys = floor(ys)
            out.append(
                Series(key, metric, ys[0], ys[-1], theil_sen(xs, ys), bounds[metric].per_1000, len(ys))
            )
    for metric in SESSION_METRICS:
        ys = [s.session[metric] for s in samples]
        out.append(
            Series("session", metric, ys[0], ys[-1], theil_sen(xs, ys), bounds[metric].per_1000, len(ys))
        )
    return out, changed


class Sampler:
    """Samples every ``interval_s`` from a thread while the load runs (``run`` until ``stop``)."""

    def __init__(self, sid: int, extra_pids: list[int], metrics_url: str, interval_s: float) -> None:
        self.sid, self.extra_pids, self.metrics_url, self.interval_s = (
            sid,
            extra_pids,
            metrics_url,
            interval_s,
        )
        self.samples: list[Sample] = []
        self.errors: list[str] = []

    def run(self, requests, started: float, stop) -> None:
        """``requests()`` is the count answered so far; ``stop`` a threading.Event."""
        while not stop.wait(self.interval_s):
            try:
                self.samples.append(
                    take(self.sid, self.extra_pids, self.metrics_url, requests(), time.monotonic() - started)
                )
            except (httpx.HTTPError, ValueError) as e:
                self.errors.append(f"{type(e).__name__}: {e}"[:200])
