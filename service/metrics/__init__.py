"""The service's metrics: the catalogue, where values go (sinks), request accounting and stage recorders.

Metrics go through ``ray.serve.metrics``: Ray's metrics agent exports them in Prometheus format on each
node's metrics port. Ray 2.60 exports a histogram's ``_sum`` from its bucket midpoints (an
approximation; ``_count`` and the buckets are exact), so totals that must be exact (pixels, bytes) are
counters of their own. Nothing here imports Ray at module level: the recorders take an optional
``sink`` and unit tests pass a ``MemorySink``.

Where each family is recorded:

* The ingress's protocol adapters (``api/http.py``, ``api/grpc.py``): ``request_call`` counts a request
  by model, protocol and status, keeps the in-flight gauge, times it end to end and measures the answer;
  ``api/context.py`` writes its access-log line.
* The codec (``service/codec.py``): ``record_prepared`` (decode and preprocess time, input pixels and
  bytes) and ``record_encoded`` (encode time).
* A model worker (``service/worker.py``): ``SegmenterMetrics`` (queue wait, forward, post-processing,
  batch size and pixels per forward pass through ``Runner.on_group``; model-ready and memory gauges).
"""

from service.metrics.catalogue import *  # noqa: F403
from service.metrics.catalogue import __all__ as _catalogue
from service.metrics.requests import (
    RequestCall,
    model_label,
    outcome_of,
    record_request,
    refresh_in_flight,
    request_call,
)
from service.metrics.sinks import MemorySink, RaySink, Sink, get_sink, set_sink
from service.metrics.stages import SegmenterMetrics, record_encoded, record_prepared, weights_digest

__all__ = [
    *_catalogue,
    "MemorySink",
    "RaySink",
    "RequestCall",
    "SegmenterMetrics",
    "Sink",
    "get_sink",
    "model_label",
    "outcome_of",
    "record_encoded",
    "record_prepared",
    "record_request",
    "refresh_in_flight",
    "request_call",
    "set_sink",
    "weights_digest",
]
