"""Observability in one place: the service's metrics, the request id in the logs, the access log.

Metrics go through ``ray.serve.metrics``: Ray's metrics agent exports them in Prometheus format on
each node's metrics port as ``ray_<name>`` (counters with ``_total``, histograms with
``_bucket``/``_sum``/``_count``), and Ray Serve adds the ``application``, ``deployment`` and
``replica`` tags. ``docs/metrics.md`` lists every metric; the dashboard and the alert rules in
``deploy/`` use them. Ray 2.60 exports a histogram's ``_sum`` from its bucket midpoints (an
approximation; ``_count`` and the buckets are exact), so totals that must be exact (pixels, bytes)
are counters of their own.

Ray's metric objects must be created inside the replica that records them, so the default sink
(``RaySink``) creates each one on first use, in the recording process. Nothing here imports Ray at
module level: the helpers take an optional ``sink`` and unit tests pass a ``MemorySink``.

Where each family is recorded (one or two calls per hook):

* Ingress (``api/http.py``, ``api/grpc.py``): ``request_call`` counts a request by
  model, protocol and status, keep the in-flight gauge, time it end to end, measure the response
  and write one access-log line; ``bind_request_id`` puts the service's request id into Ray Serve's
  request context, so every log line and handle call of that request carries it.
* ImageCodec: ``record_prepared`` (decode and preprocess time, input pixels and bytes) and
  ``record_encoded`` (encode time).
* Segmenter: ``SegmenterMetrics`` (queue wait, forward, post-processing, batch size and pixels per
  forward pass through ``Runner.on_group``; model-ready and device-memory gauges).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

logger = logging.getLogger("ray.serve")

# --- buckets ------------------------------------------------------------------------------------

# Seconds, 1-2-5 steps from 0.1 ms to 60 s: a GPU post-processing step (well under a millisecond,
# timed with device synchronization) and a CPU forward pass on a large image (seconds) both land
# in buckets fine enough for histogram_quantile; the top bucket is above the request timeout.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.0002, 0.0005,
    0.001, 0.002, 0.005,
    0.01, 0.02, 0.05,
    0.1, 0.2, 0.5,
    1.0, 2.0, 5.0,
    10.0, 20.0, 30.0,
    60.0,
)  # fmt: skip
# Items per forward pass: every size up to 4, then about x1.5 steps up to max_batch_size's limit (256).
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Pixels (H*W), x4 steps (x2 per side): 64x64 .. 16384x16384, above the 40 MP image limit.
PIXEL_BUCKETS: tuple[float, ...] = tuple(float(4**k) for k in range(6, 15))
# Bytes, x4 steps: 256 B .. 256 MiB, above the 32 MiB body limit.
BYTE_BUCKETS: tuple[float, ...] = tuple(float(4**k) for k in range(4, 15))

# --- the metrics --------------------------------------------------------------------------------

Kind = Literal["counter", "gauge", "histogram"]
PREFIX = "ray_"  # what Ray's exporter puts in front of every application metric


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The family name in a Prometheus scrape."""
        return PREFIX + self.name

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names a scrape shows for this metric."""
        if self.kind == "counter":
            return (f"{self.exported}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.exported}_{s}" for s in ("bucket", "sum", "count"))
        return (self.exported,)


REQUESTS = MetricSpec(
    "seg_requests",
    "counter",
    "Segmentation requests answered by the ingress (HTTP segment requests, gRPC Segment calls and "
    "SegmentStream frames) by model, protocol (http|grpc), protocol status (HTTP status code or gRPC "
    "status name), service error code ('ok' on success) and outcome (success|client_error|server_error).",
    ("model", "protocol", "status", "code", "outcome"),
)
IN_FLIGHT = MetricSpec(
    "seg_requests_in_flight",
    "gauge",
    "Segmentation requests being answered by this ingress replica right now.",
    ("model", "protocol"),
)
REQUEST_DURATION = MetricSpec(
    "seg_request_duration_seconds",
    "histogram",
    "End-to-end time of a segmentation request in the ingress (body read, validation, codec, "
    "segmenter, encode), successes and failures, by outcome.",
    ("model", "protocol", "outcome"),
    LATENCY_BUCKETS_S,
)
STAGE_DURATION = MetricSpec(
    "seg_stage_duration_seconds",
    "histogram",
    "Time of one request in one stage: decode, preprocess and encode (ImageCodec); queue (wait in the "
    "segmenter before its batch starts), forward and postprocess (Segmenter, device-synchronized, the "
    "whole forward pass of the request's batch).",
    ("model", "stage"),
    LATENCY_BUCKETS_S,
)
RESPONSE_BYTES = MetricSpec(
    "seg_response_bytes",
    "counter",
    "Bytes of successful answers on the wire (the HTTP body, or the serialized gRPC message).",
    ("model", "protocol", "format"),
)
RESPONSE_SIZE = MetricSpec(
    "seg_response_size_bytes",
    "histogram",
    "Size of one successful answer on the wire (the HTTP body, or the serialized gRPC message).",
    ("model", "protocol", "format"),
    BYTE_BUCKETS,
)
INPUT_BYTES = MetricSpec(
    "seg_input_bytes",
    "counter",
    "Bytes of encoded input images that decoded successfully (ImageCodec).",
    ("model",),
)
INPUT_PIXELS = MetricSpec(
    "seg_input_pixels",
    "counter",
    "Pixels (height x width) of decoded input images, before resizing to the model's input (ImageCodec).",
    ("model",),
)
IMAGE_PIXELS = MetricSpec(
    "seg_image_pixels",
    "histogram",
    "Pixels (height x width) of one decoded input image (ImageCodec).",
    ("model",),
    PIXEL_BUCKETS,
)
BATCH_SIZE = MetricSpec(
    "seg_batch_size",
    "histogram",
    "Images in one forward pass (a @serve.batch batch is split by input shape and pixel budget).",
    ("model",),
    BATCH_SIZE_BUCKETS,
)
BATCH_PIXELS = MetricSpec(
    "seg_batch_pixels",
    "histogram",
    "Model-input pixels (sum of padded height x width) in one forward pass.",
    ("model",),
    PIXEL_BUCKETS,
)
DEVICE_MEMORY = MetricSpec(
    "seg_device_memory_bytes",
    "gauge",
    "Memory in use by this segmenter replica: CUDA memory allocated by torch on a GPU, the process RSS "
    "on the CPU. Updated after every batch and at every health check.",
    ("model", "device"),
)
DEVICE_MEMORY_PEAK = MetricSpec(
    "seg_device_memory_peak_bytes",
    "gauge",
    "Peak memory of this segmenter replica since it started: torch's max CUDA memory allocated, or "
    "the process' peak RSS on the CPU.",
    ("model", "device"),
)
BATCH_QUEUE = MetricSpec(
    "seg_batch_queue_length",
    "gauge",
    "Requests waiting in this segmenter replica's batcher for a forward pass, as each batch is formed "
    "(after taking it) and at every health check.",
    ("model",),
)
MODEL_READY = MetricSpec(
    "seg_model_ready",
    "gauge",
    "1 while this segmenter replica has its model loaded and warmed up, 0 once it is broken (a forward "
    "pass failed). Labels carry the model version and the weights digest (sha256 prefix).",
    ("model", "task", "version", "weights_digest", "device"),
)

METRICS: tuple[MetricSpec, ...] = (
    REQUESTS,
    IN_FLIGHT,
    REQUEST_DURATION,
    STAGE_DURATION,
    RESPONSE_BYTES,
    RESPONSE_SIZE,
    INPUT_BYTES,
    INPUT_PIXELS,
    IMAGE_PIXELS,
    BATCH_SIZE,
    BATCH_PIXELS,
    BATCH_QUEUE,
    DEVICE_MEMORY,
    DEVICE_MEMORY_PEAK,
    MODEL_READY,
)
STAGES: tuple[str, ...] = ("decode", "preprocess", "queue", "forward", "postprocess", "encode")
UNKNOWN_MODEL = "_unknown"  # the label of requests for models that are not served (not a valid name)
PROTOCOLS = ("http", "grpc")

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


# --- label helpers ------------------------------------------------------------------------------


def model_label(name: str | None, served: Collection[str] | None) -> str:
    """The model's name when it is served, else one fixed label (names in URLs are unbounded).
    ``served=None`` (nothing to check against) keeps any non-empty name."""
    return name if name and (served is None or name in served) else UNKNOWN_MODEL


def outcome_of(http_status: int) -> str:
    if http_status < 400:
        return "success"
    if http_status < 500 or http_status == 499:
        return "client_error"
    return "server_error"


# --- ingress: requests --------------------------------------------------------------------------


def record_request(
    model: str,
    protocol: str,
    status: str,
    code: str,
    outcome: str,
    seconds: float,
    *,
    response_bytes: int | None = None,
    mask_format: str = "",
    sink: Sink | None = None,
) -> None:
    """Count one answered request and observe its duration (and its size when it succeeded)."""
    _record(
        REQUESTS,
        1,
        {"model": model, "protocol": protocol, "status": status, "code": code, "outcome": outcome},
        sink,
    )
    _record(REQUEST_DURATION, seconds, {"model": model, "protocol": protocol, "outcome": outcome}, sink)
    if response_bytes is not None and outcome == "success":
        tags = {"model": model, "protocol": protocol, "format": mask_format or "none"}
        _record(RESPONSE_BYTES, response_bytes, tags, sink)
        _record(RESPONSE_SIZE, response_bytes, tags, sink)


_in_flight: Tally = Tally()
_in_flight_lock = threading.Lock()


def _track_in_flight(model: str, protocol: str, delta: int, sink: Sink | None) -> None:
    with _in_flight_lock:
        _in_flight[(model, protocol)] += delta
        value = _in_flight[(model, protocol)]
    _record(IN_FLIGHT, value, {"model": model, "protocol": protocol}, sink)


def refresh_in_flight(served: Collection[str], sink: Sink | None = None) -> None:
    """Set every in-flight gauge again, zeros included (for every served model and protocol).

    Ray 2.60 drops a gauge series that was not set for about two report intervals (20 s), so an idle
    ingress would lose its in-flight series; the Ingress's health check (every 10 s) calls this.
    """
    with _in_flight_lock:
        for model in served:
            for protocol in PROTOCOLS:
                _in_flight.setdefault((model, protocol), 0)
        current = list(_in_flight.items())
    for (model, protocol), value in current:
        _record(IN_FLIGHT, value, {"model": model, "protocol": protocol}, sink)


class RequestCall:
    """One segmentation request at the ingress: in flight from creation to ``finish``.

    Use it as a context manager: leaving the block without ``finish`` (the request was cancelled)
    counts the request as cancelled (status 499 / CANCELLED), and the in-flight gauge always goes
    back down.
    """

    def __init__(self, protocol: str, model: str, request_id: str = "", sink: Sink | None = None) -> None:
        self.protocol = protocol
        self.model = model
        self.request_id = request_id
        self.sink = sink
        self.started = time.perf_counter()
        self.finished = False
        _track_in_flight(model, protocol, +1, sink)

    def __enter__(self) -> RequestCall:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if not self.finished:
                cancelled = "499" if self.protocol == "http" else "CANCELLED"
                self.finish(status=cancelled, http_status=499, code="cancelled")
        finally:
            _track_in_flight(self.model, self.protocol, -1, self.sink)

    def succeeded(
        self,
        status: str,
        result: Any,
        response_bytes: int | None,
        request_id: str = "",
        request_bytes: int | None = None,
    ) -> None:
        self.finish(
            status=status,
            http_status=200,
            request_id=request_id,
            result=result,
            response_bytes=response_bytes,
            request_bytes=request_bytes,
        )

    def failed(self, status: str, error: Any, request_id: str = "") -> None:
        """Finish with a ``ServiceError`` (its ``code`` and ``http_status``)."""
        self.finish(status=status, http_status=error.http_status, code=error.code, request_id=request_id)

    def finish(
        self,
        *,
        status: str,
        http_status: int,
        code: str | None = None,
        request_id: str = "",
        result: Any = None,
        response_bytes: int | None = None,
        request_bytes: int | None = None,
    ) -> None:
        """Record the request (once) and write its access-log line."""
        if self.finished:
            return
        self.finished = True
        seconds = time.perf_counter() - self.started
        outcome = outcome_of(http_status)
        code = code or ("ok" if http_status < 400 else f"http_{http_status}")
        mask_format = getattr(result, "mask_format", "") if result is not None else ""
        record_request(
            self.model,
            self.protocol,
            status,
            code,
            outcome,
            seconds,
            response_bytes=response_bytes,
            mask_format=mask_format,
            sink=self.sink,
        )
        access_log(
            model=self.model,
            protocol=self.protocol,
            status=status,
            code=code,
            outcome=outcome,
            request_id=request_id or self.request_id or current_request_id(),
            duration_ms=seconds * 1000,
            result=result,
            response_bytes=response_bytes,
            request_bytes=request_bytes,
        )


def request_call(
    protocol: str,
    model: str | None,
    served: Collection[str] | None,
    request_id: str = "",
    sink: Sink | None = None,
) -> RequestCall:
    return RequestCall(protocol, model_label(model, served), request_id, sink)


# --- request ids and the access log ---------------------------------------------------------------


def bind_request_id(request_id: str) -> None:
    """Make ``request_id`` the id of Ray Serve's request context for the rest of this task.

    Ray Serve adds the context's id to every log line (``request_id`` in the JSON logs) and passes it
    with every handle call, so the codec's and the segmenter's log lines carry it too. Ray's proxies
    take the id from ``x-request-id`` (HTTP) or ``request_id`` metadata (gRPC) only; the service
    also accepts gRPC ``x-request-id`` metadata and the ``request_id`` field, so it sets it here.
    """
    if not request_id:
        return
    try:
        from ray.serve import context

        current = context._get_serve_request_context()
        if current.request_id != request_id:
            context._serve_request_context.set(dataclasses.replace(current, request_id=request_id))
    except Exception:  # a private API: without it only the log correlation is lost
        logger.debug("could not bind the request id to Ray Serve's request context", exc_info=True)


def current_request_id() -> str:
    try:
        from ray.serve import context

        return context._get_serve_request_context().request_id or ""
    except Exception:
        return ""


def access_log(
    *,
    model: str,
    protocol: str,
    status: str,
    code: str,
    outcome: str,
    request_id: str,
    duration_ms: float,
    result: Any = None,
    response_bytes: int | None = None,
    request_bytes: int | None = None,
) -> None:
    """One line per segmentation request at the ingress; with ``logging_config: {encoding: JSON}``
    every ``extra`` field below is a key of the JSON line."""
    fields: dict[str, Any] = {
        "model": model,
        "protocol": protocol,
        "status": status,
        "code": code,
        "outcome": outcome,
        "request_id": request_id,
        "duration_ms": round(duration_ms, 3),
    }
    if result is not None:
        fields["timings_ms"] = {k: round(float(v), 3) for k, v in result.timings_ms.items()}
        fields["batch_size"] = int(result.batch_size)
        fields["format"] = result.mask_format
    if response_bytes is not None:
        fields["response_bytes"] = int(response_bytes)
    if request_bytes is not None:
        fields["request_bytes"] = int(request_bytes)
    logger.info("segment %s %s %s %s %.1fms", protocol, model, status, code, duration_ms, extra=fields)


# --- codec --------------------------------------------------------------------------------------


def _stage(model: str, stage: str, seconds: float, sink: Sink | None) -> None:
    _record(STAGE_DURATION, seconds, {"model": model, "stage": stage}, sink)


def record_prepared(prepared: Any, body_bytes: int, sink: Sink | None = None) -> None:
    """After ``prepare_image``: decode and preprocess times, the image's pixels and encoded size."""
    model = prepared.options.model
    for stage in ("decode", "preprocess"):
        if stage in prepared.timings_ms:
            _stage(model, stage, prepared.timings_ms[stage] / 1000, sink)
    height, width = prepared.geometry.original
    _record(INPUT_PIXELS, height * width, {"model": model}, sink)
    _record(IMAGE_PIXELS, height * width, {"model": model}, sink)
    _record(INPUT_BYTES, body_bytes, {"model": model}, sink)


def record_encoded(result: Any, sink: Sink | None = None) -> None:
    """After ``encode_result``: the encode time."""
    if "encode" in result.timings_ms:
        _stage(result.model, "encode", result.timings_ms["encode"] / 1000, sink)


# --- segmenter ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def weights_digest(path: str | None) -> str:
    if not path:
        return ""
    from service.config import file_digest

    try:
        return file_digest(Path(path))
    except OSError:
        return ""


class SegmenterMetrics:
    """A segmenter replica's metrics: per forward pass (``on_group``, given to ``Runner.on_group``),
    and its state (``update``: model-ready and memory gauges, after each batch and health check)."""

    def __init__(self, spec: Any, device: Any, weights: str | None, sink: Sink | None = None) -> None:
        self.model = spec.name
        self.device = str(device)
        self.sink = sink
        self.ready_tags = {
            "model": spec.name,
            "task": spec.task,
            "version": str(spec.version),
            "weights_digest": weights_digest(weights),
            "device": self.device,
        }
        self._updated_at = 0.0

    def on_group(
        self, items: Sequence[Any], queued_s: Sequence[float], forward_s: float, postprocess_s: float
    ) -> None:
        """One forward pass of ``items``: batch size and pixels, and each item's stage times."""
        tags = {"model": self.model}
        _record(BATCH_SIZE, len(items), tags, self.sink)
        pixels = sum(int(it.pixels.shape[0]) * int(it.pixels.shape[1]) for it in items)
        _record(BATCH_PIXELS, pixels, tags, self.sink)
        for queued in queued_s:
            _stage(self.model, "queue", max(queued, 0.0), self.sink)
            _stage(self.model, "forward", forward_s, self.sink)
            _stage(self.model, "postprocess", postprocess_s, self.sink)

    def after_batch(self, runner: Any, healthy: bool = True) -> None:
        """After each batch: ``update`` at most once a second (under load, batches come every few
        milliseconds and the gauges need not follow each one)."""
        now = time.monotonic()
        if not healthy or now - self._updated_at >= 1.0:
            self._updated_at = now
            self.update(runner, healthy)

    def queue_length(self, waiting: int) -> None:
        _record(BATCH_QUEUE, waiting, {"model": self.model}, self.sink)

    def update(self, runner: Any, healthy: bool = True) -> None:
        """Model-ready gauge and device memory (cheap: a few counters read from torch or the OS)."""
        _record(MODEL_READY, 1.0 if healthy else 0.0, self.ready_tags, self.sink)
        try:
            in_use, peak = runner.memory_bytes()
        except Exception:
            return
        tags = {"model": self.model, "device": self.device}
        _record(DEVICE_MEMORY, in_use, tags, self.sink)
        _record(DEVICE_MEMORY_PEAK, peak, tags, self.sink)

    def batch_failed(self, items: Sequence[Any], error: BaseException) -> None:
        """A forward pass raised: one error line naming every request id of the batch."""
        logger.error(
            "model %s failed on a batch of %d: %s: %s",
            self.model,
            len(items),
            type(error).__name__,
            error,
            extra={"model": self.model, "request_ids": [it.options.request_id for it in items]},
            exc_info=error,
        )
