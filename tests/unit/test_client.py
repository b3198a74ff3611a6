"""The Python client (segserve_client) and its CLI against real local servers, without Ray.

HTTP: a tiny ``http.server`` in a thread answers scripted replies whose bodies come from the service's
own ``result_json`` (over ``encode_result`` / ``encode_label_png``), so the client's decoding is checked
against the server's encoding. gRPC: a real ``grpc.server`` runs the service's own gRPC method bodies
(``service.api.grpc``) over a fake core that segments with the real codec functions.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pickle
import threading
from collections import Counter
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image
from segserve_client import ClientError, GrpcClient, HttpClient, RetryPolicy, SegmentationResult, connect
from segserve_client.cli import main as cli_main
from segserve_client.grpc import SERVICE_CODE_TO_GRPC, channel_options
from segserve_client.images import sniff_content_type

from service.api import grpc as grpc_api
from service.api.core import model_info
from service.api.errors import GRPC_STATUS
from service.api.http import result_json
from service.errors import ModelNotFound, Overloaded, Unavailable
from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from service.imaging.decode import decode_image
from service.imaging.encode import encode_rgb_png
from service.local import free_port
from service.pipeline import encode_result
from service.types import ClassPresence, Segmentation, SegmentOptions, SegmentResult
from tests.conftest import jpeg_bytes, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MODEL = "unet-shapes"


def make_image(height: int = 37, width: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def labels_of(image: np.ndarray) -> np.ndarray:
    """The fake model: class = red channel // 64 (0..3, the unet-shapes classes)."""
    return (image[..., 0] // 64).astype(np.uint8)


def server_result(
    repository, image: np.ndarray, fmt: str = "png", overlay: bool = False, request_id: str = "r1"
):
    """What the service's codec would produce for ``image``: the real ``encode_result``."""
    options = SegmentOptions(model=MODEL, format=fmt, overlay=overlay, request_id=request_id)
    segmentation = Segmentation(
        labels=labels_of(image),
        options=options,
        original=image if overlay else None,
        timings_ms={"decode": 1.0, "forward": 2.0},
        batch_size=2,
    )
    return encode_result(segmentation, repository.get(MODEL))


class Recorder:
    """A ``RetryPolicy.sleep`` that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def fast_policy(retries: int = 3, **kwargs: Any) -> tuple[RetryPolicy, Recorder]:
    sleep = Recorder()
    return RetryPolicy(retries=retries, backoff_s=0.01, sleep=sleep, **kwargs), sleep


# --- retry policy ---------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    low = RetryPolicy(backoff_s=0.2, max_backoff_s=1.0, rand=lambda: 0.0)
    high = RetryPolicy(backoff_s=0.2, max_backoff_s=1.0, rand=lambda: 0.999999)
    assert [round(low.delay_s(n), 3) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert [round(high.delay_s(n), 3) for n in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_retry_after_raises_the_wait_up_to_its_cap():
    policy = RetryPolicy(backoff_s=0.2, max_retry_after_s=3.0, rand=lambda: 0.0)
    assert policy.delay_s(0, retry_after_s=2.0) == 2.0
    assert policy.delay_s(0, retry_after_s=60.0) == 3.0
    assert policy.delay_s(0, retry_after_s=0.0) == pytest.approx(0.1)


def test_client_error_survives_pickle():
    error = ClientError(503, "overloaded", "busy", "rid", retryable=True, retry_after_s=1.0, attempts=4)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.code, copy.message, copy.request_id) == (503, "overloaded", "busy", "rid")
    assert (copy.retryable, copy.retry_after_s, copy.attempts) == (True, 1.0, 4)
    assert "after 4 attempts" in str(copy) and "rid" in str(copy)


def test_connect_picks_the_protocol_from_the_url():
    with connect("grpc://127.0.0.1:9") as client:
        assert isinstance(client, GrpcClient) and client.target == "127.0.0.1:9"
    with connect("http://127.0.0.1:9/", api_key="k") as client:
        assert isinstance(client, HttpClient) and client.base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="grpc://"):
        connect("127.0.0.1:9000")


def test_sniff_content_type():
    image = make_image()
    assert sniff_content_type(png_bytes(image)) == "image/png"
    assert sniff_content_type(jpeg_bytes(image)) == "image/jpeg"
    assert sniff_content_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"hello") == "application/octet-stream"


def test_client_codes_table_matches_the_service():
    assert {k: v.name for k, v in GRPC_STATUS.items()} == SERVICE_CODE_TO_GRPC


# --- HTTP -----------------------------------------------------------------------------------------------


class Reply(NamedTuple):
    status: int
    body: Any  # dict -> JSON, bytes -> as is
    headers: dict[str, str] = {}


class ScriptedServer:
    """Answers each path with its scripted replies in turn (the last one repeats); records requests."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                server.requests.append(
                    {
                        "method": self.command,
                        "path": path,
                        "query": query,
                        "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                queue = server.replies.get(path) or [
                    Reply(404, {"error": {"code": "not_found", "message": path}})
                ]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(reply.body).encode() if isinstance(reply.body, dict) else reply.body
                self.send_response(reply.status)
                content_type = "application/json" if isinstance(reply.body, dict) else "text/plain"
                for key, value in {"content-type": content_type, **reply.headers}.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def script(self, path: str, *replies: Reply) -> None:
        self.replies[path] = list(replies)

    def calls(self, path: str) -> int:
        return sum(r["path"] == path for r in self.requests)


@pytest.fixture
def http_server():
    server = ScriptedServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


SEGMENT = f"/v1/models/{MODEL}/segment"


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": "server-rid"}}


def test_http_retries_503_twice_then_decodes_the_servers_png(http_server, repository):
    image = make_image()
    busy = Reply(503, error_body("overloaded", "at capacity"), {"retry-after": "0"})
    http_server.script(SEGMENT, busy, busy, Reply(200, result_json(server_result(repository, image))))
    policy, sleep = fast_policy()
    with HttpClient(http_server.url, api_key="sekret", retry_policy=policy) as client:
        result = client.segment(image, model=MODEL, request_id="my-rid")

    assert http_server.calls(SEGMENT) == 3 and len(sleep.delays) == 2
    np.testing.assert_array_equal(result.labels, labels_of(image))
    counts = Counter(labels_of(image).ravel().tolist())
    names = {c.id: c.name for c in repository.get(MODEL).classes}
    assert result.classes == [(i, names[i], counts[i]) for i in sorted(counts)]
    assert (result.model, result.task, result.width, result.height) == (MODEL, "semantic", 53, 37)
    assert result.batch_size == 2 and result.timings_ms["forward"] == 2.0 and "encode" in result.timings_ms
    assert result.panoptic is None and result.segments == [] and result.overlay_png is None
    for request in http_server.requests:  # every attempt: same id, the key, the array sent as PNG
        headers = request["headers"]
        assert headers["x-request-id"] == "my-rid" and headers["authorization"] == "Bearer sekret"
        assert headers["content-type"] == "image/png" and request["query"] == "format=png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(request["body"]))), image)


def test_http_retry_after_is_honoured_up_to_the_cap(http_server, repository):
    image = make_image()
    http_server.script(
        SEGMENT,
        Reply(429, error_body("overloaded", "slow down"), {"retry-after": "2"}),
        Reply(429, error_body("overloaded", "slow down"), {"retry-after": "120"}),
        Reply(200, result_json(server_result(repository, image))),
    )
    policy, sleep = fast_policy(max_retry_after_s=5.0)
    with HttpClient(http_server.url, retry_policy=policy) as client:
        assert client.segment(png_bytes(image), model=MODEL).ok
    assert sleep.delays == [2.0, 5.0]


@pytest.mark.parametrize(
    ("status", "code"), [(404, "model_not_found"), (400, "invalid_image"), (415, "unsupported_media_type")]
)
def test_http_client_errors_are_not_retried(http_server, status, code):
    http_server.script(SEGMENT, Reply(status, error_body(code, "no good"), {"x-request-id": "server-rid"}))
    policy, sleep = fast_policy()
    with HttpClient(http_server.url, retry_policy=policy) as client, pytest.raises(ClientError) as info:
        client.segment(b"\x89PNG\r\n\x1a\n...", model=MODEL)
    assert (info.value.status, info.value.code, info.value.message) == (status, code, "no good")
    assert info.value.request_id == "server-rid" and info.value.attempts == 1
    assert http_server.calls(SEGMENT) == 1 and sleep.delays == []


def test_http_gives_up_after_the_retries(http_server):
    http_server.script(SEGMENT, Reply(503, b"upstream unavailable"))  # a proxy's plain-text 503
    policy, sleep = fast_policy(retries=2)
    with HttpClient(http_server.url, retry_policy=policy) as client, pytest.raises(ClientError) as info:
        client.segment(b"img", model=MODEL)
    assert (info.value.status, info.value.code, info.value.message) == (
        503,
        "unavailable",
        "upstream unavailable",
    )
    assert info.value.attempts == 3 and http_server.calls(SEGMENT) == 3 and len(sleep.delays) == 2


def test_http_no_retry_past_the_deadline(http_server):
    http_server.script(SEGMENT, Reply(503, error_body("overloaded", "busy"), {"retry-after": "5"}))
    policy, sleep = fast_policy()
    with (
        HttpClient(http_server.url, timeout_s=1.0, retry_policy=policy) as client,
        pytest.raises(ClientError),
    ):
        client.segment(b"img", model=MODEL)
    assert http_server.calls(SEGMENT) == 1 and sleep.delays == []


def test_http_connection_errors_are_retried():
    policy, sleep = fast_policy(retries=2)
    with HttpClient(f"http://127.0.0.1:{free_port()}", retry_policy=policy) as client:
        with pytest.raises(ClientError) as info:
            client.list_models()
        assert not client.ready()
    assert (info.value.status, info.value.code, info.value.attempts) == (0, "connection_error", 3)
    assert len(sleep.delays) == 2


@pytest.mark.parametrize("fmt", ["raw", "rle"])
def test_http_raw_and_rle_masks_decode_to_the_same_labels(http_server, repository, fmt):
    image = make_image(seed=3)
    http_server.script(SEGMENT, Reply(200, result_json(server_result(repository, image, fmt))))
    with HttpClient(http_server.url) as client:
        result = client.segment(image, model=MODEL, format=fmt)
    assert result.format == fmt and result.mask_png is None
    np.testing.assert_array_equal(result.labels, labels_of(image))
    assert http_server.requests[0]["query"] == f"format={fmt}"


def test_http_overlay_and_panoptic_id_png(http_server):
    panoptic = np.zeros((20, 30), np.int32)
    panoptic[2:8, 3:9], panoptic[10:18, 5:25], panoptic[0:2, :] = 1001, 70000, 5  # id 70000 uses G and B
    rgb = np.stack([panoptic % 256, (panoptic // 256) % 256, panoptic // 65536], -1).astype(np.uint8)
    segments = [
        {"id": 1001, "category_id": 1, "isthing": True, "area": 36, "bbox": [3, 2, 6, 6]},
        {"id": 70000, "category_id": 3, "isthing": True, "area": 160, "bbox": [5, 10, 20, 8]},
    ]
    overlay = encode_rgb_png(np.full((20, 30, 3), 7, np.uint8))
    result = SegmentResult(
        model="pano",
        task="panoptic",
        width=30,
        height=20,
        mask_format="png",
        mask_png=encode_rgb_png(rgb),
        classes=[ClassPresence(1, "circle", 36), ClassPresence(3, "triangle", 160)],
        segments=segments,
        overlay_png=overlay,
        request_id="r",
    )
    http_server.script("/v1/models/pano/segment", Reply(200, result_json(result)))
    with HttpClient(http_server.url) as client:
        got = client.segment(make_image(), model="pano", overlay=True)
    np.testing.assert_array_equal(got.panoptic, panoptic)
    expected = np.full((20, 30), 255, np.uint8)  # id 5 has no segment: void
    expected[panoptic == 1001], expected[panoptic == 70000] = 1, 3
    np.testing.assert_array_equal(got.labels, expected)
    assert got.segments == segments and got.overlay_png == overlay
    assert "overlay=true" in http_server.requests[0]["query"]


def test_http_model_routes_and_ready(http_server, repository):
    info = model_info(repository.get(MODEL), "abc")
    http_server.script("/v1/models", Reply(200, {"models": [info]}))
    http_server.script(f"/v1/models/{MODEL}", Reply(200, info))
    http_server.script(
        "/readyz", Reply(503, error_body("unavailable", "warming")), Reply(200, {"status": "ready"})
    )
    with HttpClient(http_server.url) as client:
        assert client.list_models() == [info] and client.get_model(MODEL) == info
        with pytest.raises(ClientError) as missing:
            client.get_model("nope")
        assert not client.ready() and client.ready()
    assert missing.value.status == 404 and http_server.calls("/v1/models/nope") == 1


# --- gRPC -----------------------------------------------------------------------------------------------


class FakeCore:
    """What ``service.api.grpc`` needs from ``SegmentationCore``, segmenting with the real codec code."""

    def __init__(self, repository, api_key: str | None = None) -> None:
        self.repository, self.api_key = repository, api_key
        self.spec = lambda name: repository.get(name) or self.repository.get(MODEL)
        self.served = repository.names()  # served models, as the real core
        self.timeouts: list[float | None] = []
        self.flaky_failures = 1

    def authenticate(self, key: str | None) -> None:
        from service.errors import Unauthenticated

        if self.api_key and key != self.api_key:
            raise Unauthenticated("missing or invalid API key")

    def deadline(self, timeout_s: float | None) -> float:
        self.timeouts.append(timeout_s)
        return 0.0

    def list_models(self) -> list[dict]:
        return [model_info(spec, "digest") for spec in self.repository.models]

    def get_model(self, name: str) -> dict:
        spec = self.repository.get(name)
        if spec is None:
            raise ModelNotFound(name, self.repository.names())
        return model_info(spec, "digest")

    async def segment(
        self, spec, body: bytes, content_type: str | None, options: SegmentOptions
    ) -> SegmentResult:
        if options.model == "busy":
            raise Overloaded("the service is at capacity; retry after a short wait")
        if options.model == "flaky" and self.flaky_failures > 0:
            self.flaky_failures -= 1
            raise Unavailable("a replica is unavailable (restarting or draining); retry")
        if options.model not in (MODEL, "flaky"):
            raise ModelNotFound(options.model, [MODEL])
        image = decode_image(body, max_pixels=40_000_000)
        return server_result(self.repository, image, options.format, options.overlay, options.request_id)


class Servicer(pb_grpc.SegmentationServicer):
    """The service's own gRPC method bodies (async) run from a thread-pool ``grpc.server``."""

    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.calls: Counter[str] = Counter()
        self.metadata: list[dict[str, str]] = []

    def Segment(self, request, context):
        self.calls[request.model] += 1
        self.metadata.append(dict(context.invocation_metadata()))
        return asyncio.run(grpc_api.unary(self.core, "Segment", request, context))

    def SegmentStream(self, request_iterator, context):
        self.metadata.append(dict(context.invocation_metadata()))

        async def requests():
            for request in request_iterator:
                yield request

        responses = grpc_api.segment_stream(self.core, requests(), context)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    yield loop.run_until_complete(responses.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()

    def ListModels(self, request, context):
        return asyncio.run(grpc_api.unary(self.core, "ListModels", request, context))

    def GetModel(self, request, context):
        self.calls[f"get:{request.name}"] += 1
        return asyncio.run(grpc_api.unary(self.core, "GetModel", request, context))


@pytest.fixture
def grpc_server(repository):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=channel_options())
    servicer = Servicer(FakeCore(repository, api_key="sekret"))
    pb_grpc.add_SegmentationServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.target = f"127.0.0.1:{port}"
    yield servicer
    server.stop(grace=None)


def grpc_client(servicer: Servicer, **kwargs: Any) -> tuple[GrpcClient, Recorder]:
    policy, sleep = fast_policy(**kwargs.pop("policy", {}))
    return GrpcClient(servicer.target, api_key="sekret", retry_policy=policy, **kwargs), sleep


def test_grpc_retries_unavailable_once_then_succeeds(grpc_server):
    image = make_image(seed=5)
    client, sleep = grpc_client(grpc_server, timeout_s=20)
    with client:
        result = client.segment(jpeg_bytes(image, quality=100), model="flaky", request_id="rid-1")
    assert grpc_server.calls["flaky"] == 2 and len(sleep.delays) == 1
    decoded = decode_image(jpeg_bytes(image, quality=100), max_pixels=10**8)
    np.testing.assert_array_equal(result.labels, labels_of(decoded))
    assert result.request_id == "rid-1" and result.width == 53 and result.height == 37
    for meta in grpc_server.metadata:
        assert meta["authorization"] == "Bearer sekret" and meta["x-request-id"] == "rid-1"
        assert 0 < int(meta["x-timeout-ms"]) <= 20_000
    assert all(0 < t <= 20 for t in grpc_server.core.timeouts)  # the service read the deadline


def test_grpc_not_found_is_not_retried(grpc_server):
    client, sleep = grpc_client(grpc_server)
    with client, pytest.raises(ClientError) as info:
        client.segment(png_bytes(make_image()), model="nope")
    assert (info.value.status, info.value.code) == ("NOT_FOUND", "not_found")
    assert "unknown model 'nope'" in info.value.message and info.value.request_id
    assert grpc_server.calls["nope"] == 1 and sleep.delays == []


def test_grpc_resource_exhausted_is_retried_until_the_retries_run_out(grpc_server):
    client, sleep = grpc_client(grpc_server, policy={"retries": 2})
    with client, pytest.raises(ClientError) as info:
        client.segment(png_bytes(make_image()), model="busy")
    assert info.value.status == "RESOURCE_EXHAUSTED" and info.value.attempts == 3
    assert grpc_server.calls["busy"] == 3 and len(sleep.delays) == 2


def test_grpc_unauthenticated_and_unreachable(grpc_server):
    with GrpcClient(grpc_server.target, api_key="wrong") as client, pytest.raises(ClientError) as info:
        client.list_models()
    assert info.value.status == "UNAUTHENTICATED"
    policy, sleep = fast_policy(retries=1)
    with GrpcClient(f"127.0.0.1:{free_port()}", retry_policy=policy, timeout_s=5) as client:
        with pytest.raises(ClientError) as down:
            client.get_model(MODEL)
        assert not client.ready()
    assert down.value.status == "UNAVAILABLE" and down.value.attempts == 2 and len(sleep.delays) == 1


def test_grpc_20_megapixel_image_in_and_mask_out(grpc_server):
    """Both ways over gRPC's 4 MiB default: the options the client sets are what let them through."""
    height, width = 3648, 5472  # 20 MP
    image = np.zeros((height, width, 3), np.uint8)
    image[:, width // 2 :, 0] = 200
    image[:800, :2000] = np.random.default_rng(0).integers(0, 256, (800, 2000, 3), dtype=np.uint8)
    body = png_bytes(image)
    assert len(body) > 4 * 1024 * 1024
    client, _ = grpc_client(grpc_server)
    with client:
        result = client.segment(body, model=MODEL, format="raw")
    assert result.labels.shape == (height, width) and result.labels.nbytes > 4 * 1024 * 1024
    np.testing.assert_array_equal(result.labels, labels_of(image))
    small, sleep = grpc_client(grpc_server, max_message_bytes=4 * 1024 * 1024)
    with small, pytest.raises(ClientError) as info:
        small.segment(body, model=MODEL, format="raw")
    assert info.value.status == "RESOURCE_EXHAUSTED" and "larger than max" in info.value.message
    assert sleep.delays == [] and grpc_server.calls[MODEL] == 1  # refused before sending, not retried


def test_grpc_stream_keeps_order_and_frame_ids_and_survives_a_bad_frame(grpc_server):
    images = {f"f{i:02d}": make_image(seed=i) for i in range(6)}
    frames = [(k, png_bytes(v)) for k, v in images.items()]
    frames.insert(3, ("broken", b"not an image at all"))
    client, _ = grpc_client(grpc_server, timeout_s=7)
    with client:
        results = list(client.stream(iter(frames), model=MODEL, request_id="s1"))
    assert [r.frame_id for r in results] == [k for k, _ in frames]
    bad = results[3]
    assert not bad.ok and bad.error.code == "invalid_image" and bad.error.status == "INVALID_ARGUMENT"
    with pytest.raises(ClientError):
        bad.raise_for_error()
    for result in results[:3] + results[4:]:
        np.testing.assert_array_equal(result.labels, labels_of(images[result.frame_id]))
        assert result.request_id == f"s1/{result.frame_id}"
    assert grpc_server.metadata[-1]["x-timeout-ms"] == "7000"


def test_grpc_stream_stops_cleanly_when_the_caller_stops(grpc_server):
    frames = ((f"{i}", png_bytes(make_image(seed=i))) for i in range(100))
    client, _ = grpc_client(grpc_server)
    with client:
        stream = client.stream(frames, model=MODEL)
        first = next(stream)
        stream.close()
    assert first.frame_id == "0" and first.ok


def test_grpc_models_and_health(grpc_server, repository):
    client, _ = grpc_client(grpc_server)
    with client:
        models = client.list_models()
        assert models == [model_info(spec, "digest") for spec in repository.models]
        assert client.get_model(MODEL) == model_info(repository.get(MODEL), "digest")
        with pytest.raises(ClientError) as info:
            client.get_model("nope")
        assert client.ready()
    assert info.value.status == "NOT_FOUND" and grpc_server.calls["get:nope"] == 1


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        (health_pb2.HealthCheckResponse.SERVING, True),
        (health_pb2.HealthCheckResponse.NOT_SERVING, False),
        (health_pb2.HealthCheckResponse.UNKNOWN, False),
        (None, False),  # no health service at all: UNIMPLEMENTED
    ],
)
def test_grpc_ready_reads_the_standard_health_service(status, ready):
    """The client builds the health messages itself; the server here is grpcio-health-checking's."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    if status is not None:
        health_servicer = health.HealthServicer()
        health_servicer.set("", status)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with GrpcClient(f"127.0.0.1:{port}", timeout_s=5) as client:
            assert client.ready() is ready
    finally:
        server.stop(grace=None)


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_segment_over_http_writes_mask_overlay_and_json(http_server, repository, tmp_path, capsys):
    image = make_image(seed=9)
    body = result_json(server_result(repository, image, overlay=True))
    http_server.script(SEGMENT, Reply(200, body))
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    out, overlay, summary = tmp_path / "mask.png", tmp_path / "overlay.png", tmp_path / "r.json"
    code = cli_main(
        [
            "segment",
            str(tmp_path / "in.png"),
            "--model",
            MODEL,
            "--url",
            http_server.url,
            "--out",
            str(out),
            "--overlay",
            str(overlay),
            "--json",
            str(summary),
        ]
    )
    assert code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), labels_of(image))
    assert overlay.read_bytes() == base64.b64decode(body["overlay"]["data"])
    assert json.loads(summary.read_text())["classes"] == body["classes"]
    line = capsys.readouterr().out
    assert "53x37" in line and "background=" in line and "forward=2.0" in line
    assert "overlay=true" in http_server.requests[0]["query"]


def test_cli_segment_reports_errors(http_server, tmp_path, capsys):
    http_server.script("/v1/models/nope/segment", Reply(404, error_body("model_not_found", "unknown model")))
    (tmp_path / "in.png").write_bytes(png_bytes(make_image()))
    assert cli_main(["segment", str(tmp_path / "in.png"), "--model", "nope", "--url", http_server.url]) == 1
    assert "model_not_found (404): unknown model" in capsys.readouterr().err


def test_cli_models_over_grpc(grpc_server, capsys):
    code = cli_main(["models", "--grpc", grpc_server.target, "--api-key", "sekret"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MODEL", "TASK", "VERSION", "INPUT", "CLASSES"]
    assert out[1].startswith(MODEL) and "1:circle" in out[1]


def test_cli_stream_folder_writes_a_mask_per_frame(grpc_server, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    images = {f"frame{i}": make_image(seed=i) for i in (2, 0, 1)}
    for name, image in images.items():
        (frames / f"{name}.png").write_bytes(png_bytes(image))
    (frames / "notes.txt").write_text("not a frame")
    out_dir = tmp_path / "masks"
    code = cli_main(
        [
            "stream",
            str(frames),
            "--model",
            MODEL,
            "--grpc",
            grpc_server.target,
            "--api-key",
            "sekret",
            "--out-dir",
            str(out_dir),
        ]
    )
    assert code == 0
    for name, image in images.items():
        np.testing.assert_array_equal(np.asarray(Image.open(out_dir / f"{name}.png")), labels_of(image))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["frame0", "frame1", "frame2"]
    assert "3 frames (0 failed)" in lines[-1] and "fps" in lines[-1]


def test_cli_stream_video(grpc_server, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write MJPG video here")
    for i in range(4):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    out_dir = tmp_path / "masks"
    code = cli_main(
        [
            "stream",
            str(video),
            "--model",
            MODEL,
            "--grpc",
            grpc_server.target,
            "--api-key",
            "sekret",
            "--out-dir",
            str(out_dir),
            "--quiet",
            "--frame-format",
            "png",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert "4 frames (0 failed)" in capsys.readouterr().out


def test_cli_stream_unreadable_video(grpc_server, tmp_path, capsys):
    bogus = tmp_path / "clip.mp4"
    bogus.write_bytes(b"not a video")
    assert cli_main(["stream", str(bogus), "--model", MODEL, "--grpc", grpc_server.target]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_result_summary_and_dict():
    result = SegmentationResult(
        model="m", task="semantic", width=2, height=1, labels=np.array([[0, 1]], np.uint8), request_id="r"
    )
    assert result.to_dict()["width"] == 2 and "m (semantic) 2x1" in result.summary()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(result.mask_png_bytes()))), [[0, 1]])
