"""service/metrics.py without Ray: buckets, declarations, and every helper against a MemorySink."""

from __future__ import annotations

import itertools
import json
import logging
import re

import numpy as np
import pytest
from pydantic import ValidationError

from service import metrics
from service.config import BatchingSpec, Limits, ModelSpec
from service.errors import InvalidImage, Overloaded
from service.models.inference import Runner
from service.models.registry import build_model
from service.pipeline import encode_result, prepare_image
from service.types import SegmentOptions, SegmentResult
from tests.conftest import png_bytes

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@pytest.fixture
def sink():
    return metrics.MemorySink()


def null_spec(name: str = "null-model", **batching) -> ModelSpec:
    return ModelSpec(
        name=name,
        task="semantic",
        architecture="null",
        classes=[
            {"id": 0, "name": "background", "color": (0, 0, 0)},
            {"id": 1, "name": "x", "color": (9, 9, 9)},
        ],
        input={"mode": "letterbox", "size": 64, "size_divisor": 16},
        batching=batching or {},
        deployment={"device": "cpu"},
    )


# --- declarations and buckets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "buckets",
    [metrics.LATENCY_BUCKETS_S, metrics.BATCH_SIZE_BUCKETS, metrics.PIXEL_BUCKETS, metrics.BYTE_BUCKETS],
)
def test_buckets_are_positive_and_strictly_increasing(buckets) -> None:
    # Ray rejects boundaries <= 0; Prometheus needs them sorted.
    assert all(b > 0 for b in buckets)
    assert all(a < b for a, b in itertools.pairwise(buckets))


def test_latency_buckets_suit_gpu_and_cpu_timings() -> None:
    b = metrics.LATENCY_BUCKETS_S
    # sub-millisecond GPU stages (synchronized post-processing) get several buckets of their own
    assert sum(1 for x in b if x <= 0.001) >= 4
    # and multi-second CPU forwards still resolve, up to past the default request timeout
    assert b[-1] > Limits().request_timeout_s and sum(1 for x in b if 1 <= x <= 10) >= 4
    # no step wider than x2.5, so histogram_quantile stays within a factor of the truth
    assert max(hi / lo for lo, hi in itertools.pairwise(b)) <= 2.5


def test_size_buckets_cover_the_limits() -> None:
    assert metrics.BATCH_SIZE_BUCKETS[0] == 1  # le="1" separates batches of one from real batches
    with pytest.raises(ValidationError):  # no batch is larger than the top bucket
        BatchingSpec(max_batch_size=int(metrics.BATCH_SIZE_BUCKETS[-1]) + 1)
    assert metrics.PIXEL_BUCKETS[-1] > Limits().max_image_pixels
    assert metrics.BYTE_BUCKETS[-1] > Limits().max_body_bytes


def test_declarations_are_valid_for_ray_serve_metrics() -> None:
    names = [spec.name for spec in metrics.METRICS]
    assert len(names) == len(set(names))
    exported = [s for spec in metrics.METRICS for s in spec.samples]
    assert len(exported) == len(set(exported)), "two metrics would export the same sample name"
    for spec in metrics.METRICS:
        assert NAME.match(spec.name) and spec.name.startswith("seg_")
        assert isinstance(spec.tag_keys, tuple) and spec.description
        assert not {"deployment", "replica", "application"} & set(spec.tag_keys)  # reserved by Serve
        assert bool(spec.buckets) == (spec.kind == "histogram")
        if spec.kind != "counter":
            assert not spec.name.endswith("_total")


def test_exported_names() -> None:
    assert metrics.REQUESTS.samples == ("ray_seg_requests_total",)
    assert metrics.IN_FLIGHT.samples == ("ray_seg_requests_in_flight",)
    assert metrics.STAGE_DURATION.samples == (
        "ray_seg_stage_duration_seconds_bucket",
        "ray_seg_stage_duration_seconds_sum",
        "ray_seg_stage_duration_seconds_count",
    )


# --- labels ---------------------------------------------------------------------------------------


def test_model_label_bounds_cardinality() -> None:
    served = {"unet-shapes"}
    assert metrics.model_label("unet-shapes", served) == "unet-shapes"
    assert metrics.model_label("../../etc/passwd", served) == metrics.UNKNOWN_MODEL
    assert metrics.model_label("", served) == metrics.UNKNOWN_MODEL
    assert metrics.model_label(None, served) == metrics.UNKNOWN_MODEL


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "success"),
        (400, "client_error"),
        (404, "client_error"),
        (413, "client_error"),
        (499, "client_error"),
        (500, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_outcome(status: int, outcome: str) -> None:
    assert metrics.outcome_of(status) == outcome


# --- ingress --------------------------------------------------------------------------------------


def result(model: str = "m", fmt: str = "png") -> SegmentResult:
    return SegmentResult(
        model=model,
        task="semantic",
        width=4,
        height=3,
        classes=[],
        mask_format=fmt,
        timings_ms={"decode": 1.0, "forward": 2.0, "total": 5.0},
        batch_size=3,
        request_id="rid",
    )


def test_request_call_success(sink) -> None:
    with metrics.request_call("grpc", "m", {"m"}, sink=sink) as call:
        assert sink.gauges[sink.key("seg_requests_in_flight", model="m", protocol="grpc")] == 1
        call.succeeded("OK", result(), 1234, "rid")
    assert sink.gauges[sink.key("seg_requests_in_flight", model="m", protocol="grpc")] == 0
    key = sink.key("seg_requests", model="m", protocol="grpc", status="OK", code="ok", outcome="success")
    assert sink.counters == {
        key: 1,
        sink.key("seg_response_bytes", model="m", protocol="grpc", format="png"): 1234,
    }
    assert len(sink.values(metrics.REQUEST_DURATION, model="m", outcome="success")) == 1
    assert sink.values(metrics.RESPONSE_SIZE, model="m") == [1234]


def test_request_call_failure_has_no_response_bytes(sink) -> None:
    with metrics.request_call("grpc", "nope", {"m"}, sink=sink) as call:
        call.failed("INVALID_ARGUMENT", InvalidImage("bad"), "rid")
    m = metrics.UNKNOWN_MODEL
    assert sink.counters == {
        sink.key(
            "seg_requests",
            model=m,
            protocol="grpc",
            status="INVALID_ARGUMENT",
            code="invalid_image",
            outcome="client_error",
        ): 1
    }
    assert sink.values(metrics.RESPONSE_SIZE) == []
    with metrics.request_call("http", "m", {"m"}, sink=sink) as call:
        call.failed("503", Overloaded("busy"))
    assert (
        sink.counters[
            sink.key(
                "seg_requests",
                model="m",
                protocol="http",
                status="503",
                code="overloaded",
                outcome="server_error",
            )
        ]
        == 1
    )


def test_request_call_cancelled_still_counts_and_leaves_flight(sink) -> None:
    with pytest.raises(TimeoutError), metrics.request_call("http", "m", {"m"}, sink=sink):
        raise TimeoutError
    key = sink.key(
        "seg_requests", model="m", protocol="http", status="499", code="cancelled", outcome="client_error"
    )
    assert sink.counters[key] == 1
    assert sink.gauges[sink.key("seg_requests_in_flight", model="m", protocol="http")] == 0


def test_refresh_in_flight_sets_every_served_series(sink) -> None:
    from service.metrics import requests as accounting

    accounting._in_flight.clear()
    call = metrics.request_call("grpc", "a", {"a", "b"}, sink=sink)
    sink.gauges.clear()
    metrics.refresh_in_flight({"a", "b"}, sink=sink)
    assert sink.gauges == {
        sink.key("seg_requests_in_flight", model=m, protocol=p): 1.0 if (m, p) == ("a", "grpc") else 0.0
        for m in ("a", "b")
        for p in ("http", "grpc", "oip_http", "oip_grpc")
    }
    with call:
        call.finish(status="OK", http_status=200)
    assert sink.gauges[sink.key("seg_requests_in_flight", model="a", protocol="grpc")] == 0


def test_finish_records_once(sink) -> None:
    call = metrics.RequestCall("http", "m", sink=sink)
    call.finish(status="200", http_status=200)
    call.finish(status="500", http_status=500)
    assert sum(sink.counters.values()) == 1


def test_requests_for_models_not_served_share_one_label(sink) -> None:
    with metrics.request_call("http", "m", {"m"}, sink=sink) as call:
        assert call.model == "m" and call.protocol == "http"
        call.finish(status="200", http_status=200)
    with metrics.request_call("http", "zzz", {"m"}, sink=sink) as call:
        assert call.model == metrics.UNKNOWN_MODEL
        call.finish(status="404", http_status=404)
    assert (
        sink.counters[
            sink.key(
                "seg_requests",
                model="_unknown",
                protocol="http",
                status="404",
                code="http_404",
                outcome="client_error",
            )
        ]
        == 1
    )
    assert sum(sink.counters.values()) == 2


def test_a_broken_sink_never_fails_a_request() -> None:
    class Broken:
        def record(self, spec, value, tags):
            raise RuntimeError("exporter down")

    with metrics.request_call("http", "m", {"m"}, sink=Broken()) as call:
        call.finish(status="200", http_status=200)


def test_memory_sink_checks_tags(sink) -> None:
    with pytest.raises(ValueError, match="tags"):
        sink.record(metrics.REQUESTS, 1, {"model": "m"})
    with pytest.raises(TypeError):
        sink.record(metrics.IN_FLIGHT, 1, {"model": "m", "protocol": 1})


# --- access log and request id --------------------------------------------------------------------


def test_access_log_fields_land_in_rays_json_lines(sink, caplog) -> None:
    formatters = pytest.importorskip("ray._common.formatters")
    from service.api.context import access_log

    call = metrics.request_call("http", "m", {"m"}, request_id="rid-7", sink=sink, on_finish=access_log)
    # Importing ray stops its loggers from propagating to the root logger caplog listens on.
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ray.serve"), call:
            call.succeeded("200", result(), 999, request_bytes=321)
    finally:
        serve_logger.removeHandler(caplog.handler)
    [record] = [r for r in caplog.records if r.getMessage().startswith("segment ")]
    line = json.loads(formatters.JSONFormatter().format(record))
    assert line["request_id"] == "rid-7"
    assert (line["model"], line["protocol"], line["status"], line["code"], line["outcome"]) == (
        "m",
        "http",
        "200",
        "ok",
        "success",
    )
    assert line["timings_ms"] == {"decode": 1.0, "forward": 2.0, "total": 5.0}
    assert (line["response_bytes"], line["request_bytes"], line["batch_size"], line["format"]) == (
        999,
        321,
        3,
        "png",
    )
    assert line["duration_ms"] >= 0 and line["levelname"] == "INFO"


def test_bind_request_id_sets_serve_request_context() -> None:
    pytest.importorskip("ray.serve.context")
    import contextvars

    from service.api import context

    def inside() -> str:
        context.bind_request_id("rid-42")
        return context.current_request_id()

    assert contextvars.copy_context().run(inside) == "rid-42"
    assert context.current_request_id() != "rid-42"  # only the context it was bound in


# --- codec and segmenter --------------------------------------------------------------------------


def test_codec_records_stages_pixels_and_bytes(sink) -> None:
    spec = null_spec()
    image = np.zeros((30, 50, 3), np.uint8)
    body = png_bytes(image)
    options = SegmentOptions(model=spec.name, request_id="r1")
    prepared = prepare_image(body, "image/png", options, spec, Limits())
    metrics.record_prepared(prepared, len(body), sink=sink)
    assert sink.counters[sink.key("seg_input_pixels", model=spec.name)] == 30 * 50
    assert sink.counters[sink.key("seg_input_bytes", model=spec.name)] == len(body)
    assert sink.values(metrics.IMAGE_PIXELS, model=spec.name) == [1500]
    runner = Runner(spec, build_model(spec))
    [segmentation] = runner.run([prepared], [0.0])
    encoded = encode_result(segmentation, spec)
    metrics.record_encoded(encoded, sink=sink)
    for stage in ("decode", "preprocess", "encode"):
        [seconds] = sink.values(metrics.STAGE_DURATION, model=spec.name, stage=stage)
        assert seconds == pytest.approx(encoded.timings_ms[stage] / 1000)


def test_segmenter_metrics_per_forward_pass(sink, tmp_path) -> None:
    spec = null_spec(max_batch_size=2)
    runner = Runner(spec, build_model(spec))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really weights")
    observer = metrics.SegmenterMetrics(spec, runner.device, str(weights), sink=sink)
    runner.on_group = observer.on_group
    options = SegmentOptions(model=spec.name)
    prepared = [
        prepare_image(png_bytes(np.zeros((h, w, 3), np.uint8)), None, options, spec, Limits())
        for h, w in [(20, 20), (30, 30), (40, 40), (64, 32)]
    ]
    results = runner.run(prepared, [0.0] * len(prepared))
    # three square inputs (64x64 after letterbox) in groups of at most 2, one 64x32 alone
    batches = sorted(sink.values(metrics.BATCH_SIZE, model=spec.name))
    assert batches == [1, 1, 2] and sum(batches) == len(prepared)
    assert sorted(sink.values(metrics.BATCH_PIXELS, model=spec.name)) == [64 * 32, 64 * 64, 2 * 64 * 64]
    for stage in ("queue", "forward", "postprocess"):
        assert len(sink.values(metrics.STAGE_DURATION, model=spec.name, stage=stage)) == len(prepared)
    forwards = sorted(sink.values(metrics.STAGE_DURATION, stage="forward"))
    assert forwards == pytest.approx(sorted(r.timings_ms["forward"] / 1000 for r in results))

    observer.update(runner)
    ready = {k: v for k, v in sink.gauges.items() if k[0] == "seg_model_ready"}
    [(key, value)] = ready.items()
    labels = dict(key[1])
    assert value == 1 and labels["weights_digest"] == metrics.weights_digest(str(weights))
    assert len(labels["weights_digest"]) == 12 and labels["device"] == "cpu" and labels["version"] == "1"
    in_use = sink.gauges[sink.key("seg_device_memory_bytes", model=spec.name, device="cpu")]
    peak = sink.gauges[sink.key("seg_device_memory_peak_bytes", model=spec.name, device="cpu")]
    assert 0 < in_use <= peak * 1.01  # RSS now vs peak RSS (ru_maxrss lags by a page or so)
    observer.update(runner, healthy=False)
    assert sink.gauges[key] == 0
    observer.queue_length(5)
    observer.queue_length(3)  # a gauge: the latest value
    assert sink.gauges[sink.key("seg_batch_queue_length", model=spec.name)] == 3


def test_batch_failure_names_every_request_id(caplog) -> None:
    spec = null_spec()
    observer = metrics.SegmenterMetrics(spec, "cpu", None, sink=metrics.MemorySink())
    options = [SegmentOptions(model=spec.name, request_id=f"r{i}") for i in range(2)]
    items = [
        prepare_image(png_bytes(np.zeros((8, 8, 3), np.uint8)), None, o, spec, Limits()) for o in options
    ]
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        observer.batch_failed(items, RuntimeError("CUDA out of memory"))
    [record] = caplog.records
    assert record.request_ids == ["r0", "r1"] and "CUDA out of memory" in record.getMessage()


class RecordingMetric:
    """Stands in for one of Ray's metric objects: what RaySink hands it at a flush."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict]] = []

    def inc(self, value, tags):
        self.calls.append(("inc", value, tags))

    def set(self, value, tags):
        self.calls.append(("set", value, tags))

    def observe(self, value, tags):
        self.calls.append(("observe", value, tags))


def test_ray_sink_flushes_one_value_per_series_and_every_observation() -> None:
    sink = metrics.RaySink(flush_interval_s=3600)  # flushed by hand below
    objects = {spec.name: RecordingMetric() for spec in metrics.METRICS}
    sink._objects = objects
    a = {"model": "a", "protocol": "http", "status": "200", "code": "ok", "outcome": "success"}
    b = {**a, "model": "b"}
    for tags in (a, a, b):
        sink.record(metrics.REQUESTS, 1, tags)
    sink.record(metrics.IN_FLIGHT, 3, {"model": "a", "protocol": "http"})
    sink.record(metrics.IN_FLIGHT, 1, {"model": "a", "protocol": "http"})
    for seconds in (0.1, 0.2, 0.2):
        sink.record(metrics.STAGE_DURATION, seconds, {"model": "a", "stage": "decode"})
    sink.flush()
    assert sorted(objects[metrics.REQUESTS.name].calls, key=lambda c: c[2]["model"]) == [
        ("inc", 2, a),
        ("inc", 1, b),
    ]
    assert objects[metrics.IN_FLIGHT.name].calls == [("set", 1, {"model": "a", "protocol": "http"})]
    assert [v for _, v, _ in objects[metrics.STAGE_DURATION.name].calls] == [0.1, 0.2, 0.2]
    sink.flush()  # nothing new: nothing recorded again
    assert len(objects[metrics.REQUESTS.name].calls) == 2
