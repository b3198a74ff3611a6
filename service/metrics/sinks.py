"""Where metric values go: Ray Serve's metrics in a replica, a memory sink in unit tests.

Ray's metric objects must be created inside the replica that records them, so ``RaySink`` creates each
one on first use, in the recording process. Nothing here imports Ray at module level.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any, Protocol

from service.metrics.catalogue import METRICS, MetricSpec

logger = logging.getLogger("ray.serve")

# --- sinks --------------------------------------------------------------------------------------


class Sink(Protocol):
    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Counter: add ``value``; gauge: set it; histogram: observe it."""


class RaySink:
    """Records through ``ray.serve.metrics``; each metric object is created on first use."""

    def __init__(self) -> None:
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()

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
        obj = self._object(spec)
        if spec.kind == "counter":
            obj.inc(value, tags=dict(tags))
        elif spec.kind == "gauge":
            obj.set(value, tags=dict(tags))
        else:
            obj.observe(value, tags=dict(tags))


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
