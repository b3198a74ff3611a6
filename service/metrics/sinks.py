"""Where metric values go: Ray Serve's metrics in a replica, a memory sink in unit tests.

Ray's metric objects must be created inside the replica that records them, so ``RaySink`` creates each
one on first use, in the recording process. Nothing here imports Ray at module level.

Why ``RaySink`` buffers: recorded on the request path, a request's ~15 values cost about a millisecond of
the replica's CPU (profiled under load: each ``record`` of Ray's metrics takes its lock and crosses
into its exporter while the model's threads hold the GIL). Ray exports every few seconds anyway, so the
request path only appends to a list; one thread flushes it every ``FLUSH_INTERVAL_S``, summing counters
and keeping each gauge's last value (one record per series), observing histogram values one by one.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any, Protocol

from service.metrics.catalogue import METRICS, MetricSpec

logger = logging.getLogger("ray.serve")

# --- sinks --------------------------------------------------------------------------------------


class Sink(Protocol):
    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Counter: add ``value``; gauge: set it; histogram: observe it."""


FLUSH_INTERVAL_S = 0.5  # well below Ray's export interval, so a scrape is at most this much behind


class RaySink:
    """Records through ``ray.serve.metrics``, from a flush thread; each metric object is created on first
    use. ``record`` only appends to the pending queue (thread-safe, no lock)."""

    def __init__(self, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pending: collections.deque[tuple[MetricSpec, float, Mapping[str, str]]] = collections.deque()
        self._flush_interval_s = flush_interval_s
        self._flusher: threading.Thread | None = None

    def _object(self, spec: MetricSpec):
        obj = self._objects.get(spec.name)
        if obj is None:
            with self._lock:
                obj = self._objects.get(spec.name)
                if obj is None:
                    from ray.serve import metrics as serve_metrics

                    if spec.kind == "counter":
                        obj = serve_metrics.Counter(spec.name, spec.description, spec.tag_keys)
                    elif spec.kind == "gauge":
                        obj = serve_metrics.Gauge(spec.name, spec.description, spec.tag_keys)
                    else:
                        obj = serve_metrics.Histogram(
                            spec.name, spec.description, list(spec.buckets), spec.tag_keys
                        )
                    self._objects[spec.name] = obj
        return obj

    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        self._pending.append((spec, value, tags))
        if self._flusher is None:
            self._start_flusher()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="metrics", daemon=True)
                self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._flush_interval_s)
            try:
                self.flush()
            except Exception:  # a broken metric must not stop the others
                logger.warning("could not flush metrics", exc_info=True)

    def flush(self) -> None:
        """Hand what was recorded since the last flush to Ray's metrics: one value per counter and gauge
        series (sum, last), every histogram observation."""
        pending = []
        while self._pending:  # append and popleft are atomic: nothing recorded meanwhile is lost
            pending.append(self._pending.popleft())
        totals: dict[tuple, float] = {}
        specs: dict[str, MetricSpec] = {}
        for spec, value, tags in pending:
            if spec.kind == "histogram":
                self._object(spec).observe(value, tags=dict(tags))
                continue
            key = (spec.name, tuple(tags.items()))
            specs[spec.name] = spec
            totals[key] = totals.get(key, 0.0) + value if spec.kind == "counter" else value
        for (name, tags), value in totals.items():
            spec, obj = specs[name], self._object(specs[name])
            if spec.kind == "counter":
                obj.inc(value, tags=dict(tags))
            else:
                obj.set(value, tags=dict(tags))


class MemorySink:
    """For tests: keeps what was recorded, and checks names, tag keys and values like Ray would."""

    def __init__(self) -> None:
        self.counters: Tally = Tally()
        self.gauges: dict[tuple, float] = {}
        self.observations: dict[tuple, list[float]] = {}

    @staticmethod
    def key(name: str, **tags: str) -> tuple:
        return (name, tuple(sorted(tags.items())))

    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        if spec not in METRICS:
            raise ValueError(f"{spec.name} is not declared in METRICS")
        if set(tags) != set(spec.tag_keys):
            raise ValueError(f"{spec.name}: tags {sorted(tags)} != declared {sorted(spec.tag_keys)}")
        if not all(isinstance(v, str) for v in tags.values()):
            raise TypeError(f"{spec.name}: tag values must be strings, got {dict(tags)}")
        if not math.isfinite(value) or (spec.kind == "counter" and value < 0):
            raise ValueError(f"{spec.name}: bad value {value}")
        key = self.key(spec.name, **tags)
        if spec.kind == "counter":
            self.counters[key] += value
        elif spec.kind == "gauge":
            self.gauges[key] = value
        else:
            self.observations.setdefault(key, []).append(value)

    def values(self, spec: MetricSpec, **tags: str) -> list[float]:
        """Histogram observations whose tags include ``tags``."""
        wanted = set(tags.items())
        return [
            v
            for (name, keys), values in self.observations.items()
            if name == spec.name and wanted <= set(keys)
            for v in values
        ]


_sink: Sink | None = None
_sink_lock = threading.Lock()


def get_sink() -> Sink:
    """The process' sink: a ``RaySink``, created by the first call (inside the replica)."""
    global _sink
    if _sink is None:
        with _sink_lock:
            if _sink is None:
                _sink = RaySink()
    return _sink


def set_sink(sink: Sink | None) -> None:
    """Replace the process' sink (tests); None goes back to a lazily created ``RaySink``."""
    global _sink
    _sink = sink


_failed_once: set[str] = set()


def _record(spec: MetricSpec, value: float, tags: Mapping[str, str], sink: Sink | None) -> None:
    """Record, never failing the request: a broken metric is logged once and otherwise ignored."""
    target = sink or get_sink()
    try:
        target.record(spec, float(value), tags)
    except Exception:
        if isinstance(target, MemorySink):
            raise
        if spec.name not in _failed_once:
            _failed_once.add(spec.name)
            logger.warning("could not record metric %s", spec.name, exc_info=True)
