"""The metric catalogue: every metric the service exports, its type, tags and buckets.

Ray's exporter names them ``ray_<name>`` (counters with ``_total``, histograms with
``_bucket``/``_sum``/``_count``) and adds the ``application``, ``deployment`` and ``replica`` tags.
``docs/metrics.md`` lists them; the dashboard and the alert rules in ``deploy/`` use them, and
``tests/unit/test_metrics_assets.py`` keeps the three in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
# Tiles of one request, x2 steps: 1 .. 32768 (a 178-megapixel image in 256-pixel tiles is ~4900).
TILE_BUCKETS: tuple[float, ...] = tuple(float(2**k) for k in range(0, 16))

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
    "Segmentation requests answered by the ingress (HTTP segment requests, gRPC Segment calls, "
    "SegmentStream frames and Open Inference Protocol infer calls) by model, protocol "
    "(http|grpc|oip_http|oip_grpc), protocol status (HTTP status code or gRPC "
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
    "Images in one forward pass (a batch of the segmenter's batcher is split by input shape and pixel "
    "budget).",
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

TILES = MetricSpec(
    "seg_tiles",
    "counter",
    "Tiles forwarded (exact; with the images, what the forward passes carried: images per forward = "
    "(forward-stage observations + tiles) / forward passes).",
    ("model",),
)
TILES_PER_REQUEST = MetricSpec(
    "seg_tiles_per_request",
    "histogram",
    "Tiles one tiled request ran through the model (large images of a model with a tile policy; tiles "
    "on the border of two column blocks count twice).",
    ("model",),
    TILE_BUCKETS,
)
TILES_PER_FORWARD = MetricSpec(
    "seg_tiles_per_forward",
    "histogram",
    "Tiles in one forward pass that carried tiles (of one or several requests; whole images of the same "
    "shape may share it).",
    ("model",),
    BATCH_SIZE_BUCKETS,
)
BLEND_DURATION = MetricSpec(
    "seg_blend_duration_seconds",
    "histogram",
    "Time to blend one band of a tiled request: weighing and adding its tiles' logits at the original "
    "resolution and the argmax of the rows it finished (device-side tensor work, in a worker thread).",
    ("model",),
    LATENCY_BUCKETS_S,
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
    TILES,
    TILES_PER_REQUEST,
    TILES_PER_FORWARD,
    BLEND_DURATION,
)
STAGES: tuple[str, ...] = ("decode", "preprocess", "queue", "forward", "postprocess", "encode")
UNKNOWN_MODEL = "_unknown"  # the label of requests for models that are not served (not a valid name)
PROTOCOLS = ("http", "grpc", "oip_http", "oip_grpc")
"""The ``protocol`` label's values: our /v1 API over HTTP and gRPC, the Open Inference Protocol's two."""

__all__ = [
    "BATCH_PIXELS",
    "BATCH_QUEUE",
    "BATCH_SIZE",
    "BATCH_SIZE_BUCKETS",
    "BLEND_DURATION",
    "BYTE_BUCKETS",
    "DEVICE_MEMORY",
    "DEVICE_MEMORY_PEAK",
    "IMAGE_PIXELS",
    "INPUT_BYTES",
    "INPUT_PIXELS",
    "IN_FLIGHT",
    "LATENCY_BUCKETS_S",
    "METRICS",
    "MODEL_READY",
    "PIXEL_BUCKETS",
    "PREFIX",
    "PROTOCOLS",
    "REQUESTS",
    "REQUEST_DURATION",
    "RESPONSE_BYTES",
    "RESPONSE_SIZE",
    "STAGES",
    "STAGE_DURATION",
    "TILES",
    "TILES_PER_FORWARD",
    "TILES_PER_REQUEST",
    "TILE_BUCKETS",
    "UNKNOWN_MODEL",
    "Kind",
    "MetricSpec",
]
