"""Overload: past the configured queue bounds, requests are refused at once with the overload status.

An extra application "overload" (at /overload) serves the unet-shapes weights as model
"unet-shapes-overload" with ``max_ongoing_requests: 1``, ``max_queued_requests: 2`` and
``max_batch_size: 1`` (so the segmenter really takes one request at a time: its ``max_ongoing_requests``
is at least the batch size), and input mode ``pad`` (the forward runs at full resolution, so the
segmenter, not the codec, is the bottleneck). A closed-loop flood of 12 clients gets, for
every request, either a correct answer or HTTP 503 + ``Retry-After`` + JSON error / gRPC
RESOURCE_EXHAUSTED, quickly; never a hang or a 500. The application is deleted afterwards.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from segserve_client import ClientError, HttpClient, RetryPolicy

from service.config import load_repository
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.training.shapes import make_sample
from tests.conftest import png_bytes
from tests.integration.apps import ROOT, ClosedLoop, extra_app, light_args, replica_actors, temp_repository
from tests.integration.helpers import direct_labels
from tests.integration.test_http import mask_of

pytestmark = pytest.mark.integration
APP = "overload"
MODEL = "unet-shapes-overload"
CLIENTS = 12  # concurrent closed-loop clients; the segmenter holds 1 running + 2 queued
FLOOD_S = 8
IMAGES = 6
REFUSED_WITHIN_S = 5  # a refusal does not wait for the model
ANSWERED_WITHIN_S = 30  # an accepted request waits for at most 2 others before its own forward


@pytest.fixture(scope="module")
def overload_repository():
    with temp_repository(
        APP,
        name=MODEL,
        input={"mode": "pad"},
        deployment={"max_ongoing_requests": 1, "max_queued_requests": 2, "num_cpus": 0},
        batching={"max_batch_size": 1},
    ) as path:
        yield path


@pytest.fixture(scope="module")
def overload(service, overload_repository):
    with extra_app(service, APP, light_args(overload_repository)) as url:
        yield url


@pytest.fixture(scope="module")
def expected(overload_repository):
    """The model called directly with the overload application's spec (full-resolution input)."""
    repository = load_repository(ROOT / overload_repository)
    return lambda body: direct_labels(repository, MODEL, body)


@pytest.fixture(scope="module")
def bodies():
    """Distinct images large enough that one full-resolution forward takes a noticeable time."""
    return [png_bytes(make_sample(900 + i, (384, 512)).image) for i in range(IMAGES)]


def flood(send, bodies: list[bytes]) -> list[tuple[int, object, float]]:
    """``CLIENTS`` closed-loop clients for ``FLOOD_S`` seconds, each sending the next image as soon as it
    has its previous answer: (image index, what ``send`` returned, seconds to the answer) per request."""
    with ClosedLoop(lambda i: (i % len(bodies), send(bodies[i % len(bodies)])), CLIENTS) as load:
        time.sleep(FLOOD_S)
    answers = []
    for start, end, outcome in load.records:
        assert not isinstance(outcome, Exception), f"a request got no answer: {outcome!r}"
        i, answer = outcome
        answers.append((i, answer, end - start))
    return answers


def http_flood(service, app: str, expected, bodies: list[bytes]) -> list[tuple[int, object, float]]:
    """``flood`` over HTTP to application ``app``, with the checks every refusal and answer must pass:
    only 200 or 503; at least 5 refused (fast, ``Retry-After: 1``) and 2 answered (in bounded time,
    equal to the direct model call). Returns the answers for checks of the refusals' bodies."""
    with service.http() as c:
        path = f"/{app}/v1/models/{MODEL}/segment"
        answers = flood(lambda b: c.post(path, content=b, headers={"content-type": "image/png"}), bodies)
    statuses = [r.status_code for _, r, _ in answers]
    print(f"HTTP flood on {app}: {statuses.count(200)} answered, {statuses.count(503)} refused")
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) >= 5 and statuses.count(200) >= 2, statuses
    checked = {}
    for i, r, elapsed in answers:
        if r.status_code == 503:
            assert elapsed < REFUSED_WITHIN_S, elapsed
            assert r.headers.get("retry-after") == "1", (dict(r.headers), r.text)
        else:
            assert elapsed < ANSWERED_WITHIN_S, elapsed
            if i not in checked:
                checked[i] = expected(bodies[i])
            np.testing.assert_array_equal(mask_of(r), checked[i])
    return answers


def test_http_flood_gets_answers_or_503_with_retry_after(service, overload, expected, bodies):
    replicas = replica_actors(APP)
    for _, r, _ in http_flood(service, APP, expected, bodies):
        if r.status_code == 503:  # refused by our code: the JSON error body
            error = r.json()["error"]
            assert error["code"] == "overloaded" and error["message"] and error["request_id"]
    assert replica_actors(APP) == replicas  # refusing is not crashing


def grpc_flood(service, app: str, bodies: list[bytes]):
    """``flood`` over gRPC to application ``app``: the answers (an RpcError where refused) and codes."""
    stub = service.grpc_stub()
    meta = [("application", app)]

    def send(body: bytes):
        try:
            return stub.Segment(pb.SegmentRequest(model=MODEL, image=body), timeout=60, metadata=meta)
        except grpc.RpcError as e:
            return e

    answers = flood(send, bodies)
    codes = [a.code() if isinstance(a, grpc.RpcError) else grpc.StatusCode.OK for _, a, _ in answers]
    return answers, codes


def test_grpc_flood_gets_answers_or_resource_exhausted(service, overload, expected, bodies):
    answers, codes = grpc_flood(service, APP, bodies)
    ok = codes.count(grpc.StatusCode.OK)
    print(f"gRPC flood: {ok} answered, {len(codes) - ok} refused")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 5 and codes.count(grpc.StatusCode.OK) >= 2
    checked = {}
    for i, answer, elapsed in answers:
        if isinstance(answer, grpc.RpcError):
            assert elapsed < REFUSED_WITHIN_S and "capacity" in answer.details(), (elapsed, answer.details())
            continue
        assert elapsed < ANSWERED_WITHIN_S, elapsed
        if i not in checked:
            checked[i] = expected(bodies[i])
        np.testing.assert_array_equal(decode_label_png(answer.mask_png), checked[i])


def test_client_retries_get_everything_through_eventually(service, overload, expected, bodies):
    """The client library honours Retry-After and backs off with jitter: a smaller burst all succeeds."""
    policy = RetryPolicy(retries=12, backoff_s=0.2, max_backoff_s=2.0, max_retry_after_s=2.0)
    burst = bodies[:8]

    def send(body: bytes):
        with HttpClient(overload, timeout_s=120, retry_policy=policy) as client:
            try:
                return client.segment(body, model=MODEL)
            except ClientError as e:
                return e

    with ThreadPoolExecutor(len(burst)) as pool:
        results = list(pool.map(send, burst))
    failures = [r for r in results if isinstance(r, ClientError)]
    assert not failures, [(f.status, f.code, f.attempts) for f in failures]
    for result, body in zip(results, burst, strict=True):
        np.testing.assert_array_equal(result.labels, expected(body))


def test_the_overload_app_recovers_once_the_flood_is_over(service, overload):
    with service.http() as c:
        r = c.post(f"/{APP}/v1/models/{MODEL}/segment", content=png_bytes(make_sample(1, (64, 64)).image))
        assert r.status_code == 200
        assert c.get(f"/{APP}/readyz").status_code == 200


# --- the ingress's own queue ------------------------------------------------------------------------
# Past the ingress's bounds Ray's proxies refuse before our code runs; ``backpressure_config`` in
# service/app.py makes that 503 carry Retry-After like ours. Application "ingress-overload": the
# ingress takes 1 request and queues 1 more; the segmenter (max_ongoing_requests 128) never refuses.

INGRESS_APP = "ingress-overload"


@pytest.fixture(scope="module")
def ingress_overload(service):
    with temp_repository(
        INGRESS_APP,
        name=MODEL,
        input={"mode": "pad"},
        deployment={"num_cpus": 0, "max_ongoing_requests": 128},
    ) as repository:
        args = light_args(repository)
        args["ingress"] = {**args["ingress"], "max_ongoing_requests": 1, "max_queued_requests": 1}
        with extra_app(service, INGRESS_APP, args) as url:
            yield url


def test_a_full_ingress_queue_gets_503_with_retry_after_from_the_proxy(
    service, ingress_overload, expected, bodies
):
    http_flood(service, INGRESS_APP, expected, bodies)  # refused by Ray's proxy: its own body


def test_a_full_ingress_queue_gets_resource_exhausted_over_grpc(service, ingress_overload, bodies):
    answers, codes = grpc_flood(service, INGRESS_APP, bodies)
    refused = [(a, elapsed) for _, a, elapsed in answers if isinstance(a, grpc.RpcError)]
    print(f"gRPC flood on the ingress: {codes.count(grpc.StatusCode.OK)} answered, {len(refused)} refused")
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    assert len(refused) >= 5 and codes.count(grpc.StatusCode.OK) >= 2, codes
    assert all(elapsed < REFUSED_WITHIN_S for _, elapsed in refused)
