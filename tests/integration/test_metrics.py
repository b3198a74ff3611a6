"""Metrics from a real scrape of Ray's metrics agent, request ids in answers and logs, the dashboard's names.

The session's Ray Serve is shared with other modules, so everything is measured as a delta: wait until
the scrape is stable (Ray reports every 10 s), scrape, send a known mix of requests over HTTP and gRPC
to every served model (successes, concurrent bursts, bad inputs, an unknown model), then poll the scrape
until the counters moved, and check they moved by exactly what was sent.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from tests.conftest import png_bytes
from tests.integration.apps import session_ingress_replicas
from tests.unit.test_metrics_assets import used_metric_names

pytestmark = pytest.mark.integration

APP = "segmentation"
REPORT_INTERVAL_S = 10  # Ray's metrics_report_interval_ms
SETTLE_S = REPORT_INTERVAL_S + 2
POLL_S = 45
GRPC_META = [("application", APP)]  # names the app when a test module deployed a second one
UNKNOWN = "_unknown"
STAGES = ("decode", "preprocess", "queue", "forward", "postprocess", "encode")


# --- scraping -------------------------------------------------------------------------------------


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def select(self, name: str, **labels: str):
        return [
            s
            for s in self.samples
            if s.name == name
            and s.labels.get("application", APP) == APP
            and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.select(name, **labels))

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def fingerprint(self) -> tuple:
        """Our counters and histogram counts: what must stop moving before a delta can be measured."""
        return tuple(
            sorted(
                (s.name, tuple(sorted(s.labels.items())), s.value)
                for s in self.samples
                if s.name.startswith("ray_seg_") and (s.name.endswith("_total") or s.name.endswith("_count"))
            )
        )


def scrape(service) -> Scrape:
    return Scrape(httpx.get(service.metrics_url, timeout=10).text)


def settled_scrape(service, timeout_s: float = 90) -> Scrape:
    """A scrape after our counters stayed unchanged for longer than Ray's report interval."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while True:
        current = scrape(service)
        fingerprint = current.fingerprint()
        if fingerprint != last:
            last, since = fingerprint, time.monotonic()
        elif time.monotonic() - since >= SETTLE_S:
            return current
        if time.monotonic() > deadline:
            raise TimeoutError("the metrics never settled: is something else sending requests?")
        time.sleep(1)


# --- what is sent, and what it must add up to -------------------------------------------------------


@dataclass
class Expected:
    requests: collections.Counter = field(
        default_factory=collections.Counter
    )  # (model, protocol, status, code, outcome)
    durations: collections.Counter = field(default_factory=collections.Counter)  # (model, protocol, outcome)
    successes: collections.Counter = field(default_factory=collections.Counter)  # model
    pixels: collections.Counter = field(default_factory=collections.Counter)  # model
    input_bytes: collections.Counter = field(default_factory=collections.Counter)  # model
    response_bytes: collections.Counter = field(
        default_factory=collections.Counter
    )  # (model, protocol, format)
    responses: collections.Counter = field(default_factory=collections.Counter)  # (model, protocol, format)

    def ok(self, model: str, protocol: str, body: bytes, shape: tuple[int, int], fmt: str, size: int) -> None:
        self.request(model, protocol, "200" if protocol == "http" else "OK", "ok", "success")
        self.successes[model] += 1
        self.pixels[model] += shape[0] * shape[1]
        self.input_bytes[model] += len(body)
        self.response_bytes[(model, protocol, fmt)] += size
        self.responses[(model, protocol, fmt)] += 1

    def request(self, model: str, protocol: str, status: str, code: str, outcome: str) -> None:
        self.requests[(model, protocol, status, code, outcome)] += 1
        self.durations[(model, protocol, outcome)] += 1

    def deltas_reached(self, before: Scrape, after: Scrape) -> bool:
        def delta(name, **labels):
            return after.total(name, **labels) - before.total(name, **labels)

        checks = [
            delta("ray_seg_requests_total", model=m, protocol=p, status=s, code=c, outcome=o) >= n
            for (m, p, s, c, o), n in self.requests.items()
        ]
        checks += [
            delta("ray_seg_stage_duration_seconds_count", model=m, stage=stage) >= n
            for m, n in self.successes.items()
            for stage in STAGES
        ]
        checks += [delta("ray_seg_input_pixels_total", model=m) >= n for m, n in self.pixels.items()]
        checks += [
            delta("ray_seg_response_bytes_total", model=m, protocol=p, format=f) >= n
            for (m, p, f), n in self.response_bytes.items()
        ]
        return all(checks)


def image(seed: int, shape: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))


@dataclass
class Traffic:
    models: list[str]
    infos: dict[str, dict]
    before: Scrape
    after: Scrape
    expected: Expected
    traced: dict[str, str]  # what -> request id
    seen: set[str]  # sample names in any scrape taken (Ray drops gauges that are not set for ~20 s)

    def delta(self, name: str, **labels: str) -> float:
        return self.after.total(name, **labels) - self.before.total(name, **labels)


def send_http_success(client, expected, model, seed, shape, request_id=None, fmt="png") -> httpx.Response:
    body = image(seed, shape)
    headers = {"content-type": "image/png", **({"x-request-id": request_id} if request_id else {})}
    r = client.post(f"/v1/models/{model}/segment?format={fmt}", content=body, headers=headers)
    assert r.status_code == 200, r.text
    expected.ok(model, "http", body, shape, fmt, len(r.content))
    return r


def send_grpc_success(stub, expected, model, seed, shape, request_id=None, fmt=pb.MASK_FORMAT_PNG):
    body = image(seed, shape)
    meta = [*GRPC_META, *([("x-request-id", request_id)] if request_id else [])]
    response, call = stub.Segment.with_call(
        pb.SegmentRequest(model=model, image=body, format=fmt), metadata=meta, timeout=120
    )
    name = {pb.MASK_FORMAT_PNG: "png", pb.MASK_FORMAT_RAW: "raw", pb.MASK_FORMAT_RLE: "rle"}[fmt]
    expected.ok(model, "grpc", body, shape, name, response.ByteSize())
    return response, call


@pytest.fixture(scope="module")
def traffic(service) -> Traffic:
    with service.http() as client:
        infos = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    models = sorted(infos)
    assert models, "no model served"
    before = settled_scrape(service)
    expected = Expected()
    traced: dict[str, str] = {}
    stub = service.grpc_stub()
    first = models[0]
    tag = uuid.uuid4().hex[:8]

    with service.http() as client:
        for k, model in enumerate(models):
            # sequential successes in two formats and odd sizes (exact pixel counts), one traced
            traced[f"http-{model}"] = f"metrics-http-{model}-{tag}"
            r = send_http_success(client, expected, model, 10 + k, (61 + k, 83), traced[f"http-{model}"])
            traced[f"http-{model}-answer"] = r.headers["x-request-id"] + "|" + r.json()["request_id"]
            send_http_success(client, expected, model, 20 + k, (90, 71 + k), fmt="rle")
            r = send_http_success(client, expected, model, 30 + k, (50, 50))  # id chosen by the service
            traced[f"http-{model}-generated"] = r.headers["x-request-id"] + "|" + r.json()["request_id"]
            # bad inputs
            bad = [
                (f"/v1/models/{model}/segment", b"not an image", "image/png", "400", "invalid_image"),
                (
                    f"/v1/models/{model}/segment",
                    image(1, (8, 8)),
                    "text/plain",
                    "415",
                    "unsupported_media_type",
                ),
                (
                    f"/v1/models/{model}/segment?colour=red",
                    image(1, (8, 8)),
                    "image/png",
                    "400",
                    "invalid_argument",
                ),
            ]
            for path, body, content_type, status, code in bad:
                r = client.post(path, content=body, headers={"content-type": content_type})
                assert (str(r.status_code), r.json()["error"]["code"]) == (status, code), r.text
                expected.request(model, "http", status, code, "client_error")
        r = client.post(
            "/v1/models/no-such-model/segment", content=b"x", headers={"content-type": "image/png"}
        )
        assert r.status_code == 404
        expected.request(UNKNOWN, "http", "404", "model_not_found", "client_error")

        # concurrent bursts to every model at once: the segmenters must form batches > 1
        jobs = [(model, 1000 + 100 * k + i) for k, model in enumerate(models) for i in range(16)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lambda job: send_http_success(client, expected, job[0], job[1], (96, 96)), jobs))

    for k, model in enumerate(models):
        traced[f"grpc-{model}"] = f"metrics-grpc-{model}-{tag}"
        response, call = send_grpc_success(
            stub, expected, model, 40 + k, (77, 59 + k), traced[f"grpc-{model}"]
        )
        trailing = dict(call.trailing_metadata())
        traced[f"grpc-{model}-answer"] = trailing.get("x-request-id", "") + "|" + response.request_id
        send_grpc_success(stub, expected, model, 50 + k, (64, 48), fmt=pb.MASK_FORMAT_RAW)
        with pytest.raises(grpc.RpcError) as info:
            stub.Segment(pb.SegmentRequest(model=model, image=b"junk"), metadata=GRPC_META, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        expected.request(model, "grpc", "INVALID_ARGUMENT", "invalid_image", "client_error")
    with pytest.raises(grpc.RpcError) as info:
        stub.Segment(pb.SegmentRequest(model="no-such-model", image=b"x"), metadata=GRPC_META, timeout=60)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    expected.request(UNKNOWN, "grpc", "NOT_FOUND", "model_not_found", "client_error")

    # a stream: two frames answered, one frame with an error (the stream itself stays OK)
    frames = [image(60, (40, 56)), b"junk", image(61, (56, 40))]
    requests = (pb.SegmentRequest(model=first, image=f, frame_id=str(i)) for i, f in enumerate(frames))
    answers = list(stub.SegmentStream(requests, metadata=GRPC_META, timeout=120))
    assert [bool(a.error.code) for a in answers] == [False, True, False]
    for frame, answer in zip(frames, answers, strict=True):
        if answer.error.code:
            expected.request(first, "grpc", "INVALID_ARGUMENT", "invalid_image", "client_error")
        else:
            shape = (answer.height, answer.width)
            expected.ok(first, "grpc", frame, shape, "png", answer.ByteSize())

    deadline = time.monotonic() + POLL_S
    after = scrape(service)
    seen = before.names() | after.names()
    while not expected.deltas_reached(before, after) and time.monotonic() < deadline:
        time.sleep(1)
        after = scrape(service)
        seen |= after.names()
    return Traffic(models, infos, before, after, expected, traced, seen)


# --- the checks -----------------------------------------------------------------------------------


def test_requests_counted_exactly_by_model_protocol_status(traffic):
    got = {
        key: traffic.delta(
            "ray_seg_requests_total",
            model=key[0],
            protocol=key[1],
            status=key[2],
            code=key[3],
            outcome=key[4],
        )
        for key in traffic.expected.requests
    }
    assert got == dict(traffic.expected.requests)
    # and nothing else moved: no request was counted under another label set
    assert traffic.delta("ray_seg_requests_total") == sum(traffic.expected.requests.values())
    protocols = {key[1] for key in traffic.expected.requests}
    models = {key[0] for key in traffic.expected.requests}
    assert protocols == {"http", "grpc"} and models == {*traffic.models, UNKNOWN}


def test_end_to_end_histogram_counts(traffic):
    for (model, protocol, outcome), n in traffic.expected.durations.items():
        name = "ray_seg_request_duration_seconds_count"
        assert traffic.delta(name, model=model, protocol=protocol, outcome=outcome) == n, (model, protocol)
        # the +Inf bucket holds every observation
        inf = traffic.delta(
            "ray_seg_request_duration_seconds_bucket",
            model=model,
            protocol=protocol,
            outcome=outcome,
            le="+Inf",
        )
        assert inf == n


def test_every_stage_observed_once_per_successful_request(traffic):
    for model in traffic.models:
        n = traffic.expected.successes[model]
        for stage in STAGES:
            assert traffic.delta("ray_seg_stage_duration_seconds_count", model=model, stage=stage) == n, stage
    # no stage observed for unknown models or failures
    assert traffic.delta("ray_seg_stage_duration_seconds_count", model=UNKNOWN) == 0


def test_pixels_and_bytes_are_exact(traffic):
    e = traffic.expected
    for model in traffic.models:
        assert traffic.delta("ray_seg_input_pixels_total", model=model) == e.pixels[model]
        assert traffic.delta("ray_seg_input_bytes_total", model=model) == e.input_bytes[model]
        assert traffic.delta("ray_seg_image_pixels_count", model=model) == e.successes[model]
    for (model, protocol, fmt), n in e.response_bytes.items():
        labels = {"model": model, "protocol": protocol, "format": fmt}
        assert traffic.delta("ray_seg_response_bytes_total", **labels) == n, labels
        assert (
            traffic.delta("ray_seg_response_size_bytes_count", **labels)
            == e.responses[(model, protocol, fmt)]
        )


def test_batches_larger_than_one_under_concurrent_load(traffic):
    for model in traffic.models:
        passes = traffic.delta("ray_seg_batch_size_count", model=model)
        singles = sum(
            s.value
            for s in traffic.after.select("ray_seg_batch_size_bucket", model=model)
            if float(s.labels["le"]) == 1
        ) - sum(
            s.value
            for s in traffic.before.select("ray_seg_batch_size_bucket", model=model)
            if float(s.labels["le"]) == 1
        )
        images = traffic.expected.successes[model]
        assert 0 < passes < images, (model, passes, images)  # fewer forward passes than images
        assert passes - singles > 0, f"{model}: no forward pass had more than one image"
        assert traffic.delta("ray_seg_batch_pixels_count", model=model) == passes


def test_gauges_in_flight_memory_and_model_ready(service, traffic, repository):
    def in_flight() -> dict[tuple[str, str], float]:
        series: dict[tuple[str, str], float] = collections.Counter()
        for s in scrape(service).select("ray_seg_requests_in_flight"):
            series[(s.labels["model"], s.labels["protocol"])] += s.value
        return series

    # every served model and protocol has a series (refreshed by the ingress's health check), all idle
    wanted = {(m, p) for m in traffic.models for p in ("http", "grpc")}
    deadline = time.monotonic() + 3 * REPORT_INTERVAL_S
    while not (wanted <= set(series := in_flight()) and not any(series.values())):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= set(series) and not any(series.values()), series
    for model in traffic.models:
        info = traffic.infos[model]
        replicas = session_ingress_replicas()  # fused: every ingress replica runs every model
        readies = traffic.after.select("ray_seg_model_ready", model=model)
        assert len(readies) == replicas  # one series per replica
        for ready in readies:
            assert ready.value == 1
            assert ready.labels["weights_digest"] == info["weights_digest"]
            assert ready.labels["version"] == info["version"] and ready.labels["task"] == info["task"]
        memories = traffic.after.select("ray_seg_device_memory_bytes", model=model)
        peaks = traffic.after.select("ray_seg_device_memory_peak_bytes", model=model)
        assert len(memories) == len(peaks) == replicas
        for memory, peak in zip(memories, peaks, strict=True):
            assert memory.value > 10e6 and peak.value > 10e6 and memory.labels["device"] in {"cpu", "cuda"}


def test_every_metric_of_the_dashboard_and_alerts_exists(traffic):
    missing = sorted(used_metric_names() - traffic.seen)
    assert not missing, f"used in deploy/grafana or deploy/prometheus but not in a real scrape: {missing}"


def test_request_ids_agree_in_answers(traffic):
    for model in traffic.models:
        sent = traffic.traced[f"http-{model}"]
        # header (once, not "id, id") and JSON body carry the id that was sent
        assert traffic.traced[f"http-{model}-answer"].split("|") == [sent, sent]
        header, body = traffic.traced[f"http-{model}-generated"].split("|")
        assert header == body and len(body) >= 16 and "," not in header  # one header, the same id
        assert traffic.traced[f"grpc-{model}-answer"].split("|") == [traffic.traced[f"grpc-{model}"]] * 2


def serve_logs() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"


def lines_with(request_id: str, app: str = APP) -> dict[str, list[str]]:
    """Log lines of ``app``'s replicas that mention ``request_id``, by deployment."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for path in serve_logs().glob(f"replica_{app}_*.log"):
        deployment = path.stem[len(f"replica_{app}_") :].rsplit("_", 1)[0]
        for line in path.read_text(errors="replace").splitlines():
            if request_id in line:
                found[deployment].append(line)
    return found


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_id_in_every_deployments_log_lines(traffic, protocol):
    model = traffic.models[0]
    request_id = traffic.traced[f"{protocol}-{model}"]
    wanted = {"Ingress"}  # the session app is fused: the ingress replicas run the models
    deadline = time.monotonic() + 20
    while not wanted <= set(found := lines_with(request_id)) and time.monotonic() < deadline:
        time.sleep(1)
    assert wanted <= set(found), {k: v[:2] for k, v in found.items()}
    status = "200" if protocol == "http" else "OK"
    access = [line for line in found["Ingress"] if f"segment {protocol} {model} {status}" in line]
    assert len(access) == 1, found["Ingress"]
    # deploy/serve_config.yaml sets JSON logs: the id is a field of every line, not just text
    for deployment in wanted:
        for line in found[deployment]:
            assert json.loads(line)["request_id"] == request_id, line
    fields = json.loads(access[0])
    assert (fields["model"], fields["protocol"], fields["status"], fields["code"]) == (
        model,
        protocol,
        status,
        "ok",
    )
    assert set(STAGES) <= set(fields["timings_ms"]) and fields["response_bytes"] > 0
