"""Faults under load: a replica that runs the models killed mid-run, a redeploy with a changed config,
and a worker node removed from or crashed in a 3-node cluster (``multinode_scenario.py``, in a
subprocess with its own Ray).

Load comes from closed-loop clients: raw ones (no retries) record every status the service answers;
the client library's ones (retries on 503 / UNAVAILABLE / RESOURCE_EXHAUSTED with backoff) must
lose no request. Every served mask is compared with the direct model call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
from segserve_client import ClientError, GrpcClient, HttpClient, RetryPolicy
from segserve_client.http import result_from_json

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.training.shapes import make_sample
from tests.conftest import png_bytes
from tests.integration.apps import (
    MODEL,
    READY_TIMEOUT_S,
    ROOT,
    SESSION_APP,
    ClosedLoop,
    app_is_healthy,
    deploy_app,
    deployment_replicas,
    extra_app,
    kill_actor,
    light_args,
    session_ingress_replicas,
    temp_repository,
    wait_for,
)
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
RECOVERY_BOUND_S = 60  # measured on a loaded 2-core machine: see the printed recovery time
RETRIES = RetryPolicy(retries=8, backoff_s=0.2, max_backoff_s=2.0, max_retry_after_s=2.0)


@pytest.fixture(scope="module")
def images(repository):
    bodies = [png_bytes(make_sample(700 + i, (96, 128)).image) for i in range(4)]
    return bodies, [direct_labels(repository, MODEL, b) for b in bodies]


def check_results(outcomes, expected) -> None:
    """Client-library outcomes: every one a result equal to the direct call, none a ClientError."""
    failures = [o for _, o in outcomes if isinstance(o, BaseException)]
    assert not failures, [repr(f)[:200] for f in failures[:5]]
    for i, result in outcomes:
        np.testing.assert_array_equal(result.labels, expected[i])


def session_healthy(service) -> bool:
    """The shipped (fused, CPU) topology's one deployment at its configured replica count."""
    return app_is_healthy(service.url, SESSION_APP, {"Ingress": session_ingress_replicas()})


def test_killed_model_replica_is_replaced_and_no_request_is_lost(service, images):
    """An ingress replica (which runs the models, fused) dies under load: HAProxy sends the traffic to the
    other one, Ray Serve starts a replacement, and the client library loses nothing."""
    bodies, expected = images
    assert session_healthy(service)
    replicas = deployment_replicas("Ingress")
    assert len(replicas) == session_ingress_replicas() >= 2
    victim, victim_pid = sorted(replicas.items())[0]
    raw_http = service.http(timeout=120)
    http_client = HttpClient(service.url, timeout_s=120, retry_policy=RETRIES)
    grpc_client = GrpcClient(service.grpc_target, timeout_s=120, retry_policy=RETRIES)

    def raw(i: int):
        r = raw_http.post(
            f"/v1/models/{MODEL}/segment", content=bodies[i % 4], headers={"content-type": "image/png"}
        )
        if r.status_code == 200:
            return 200, None, None
        return r.status_code, r.headers.get("retry-after"), r.json()["error"]["code"], r.text

    def via(client):
        def send(i: int):
            try:
                return i % 4, client.segment(bodies[i % 4], model=MODEL)
            except ClientError as e:
                return i % 4, e

        return send

    with (
        raw_http,
        http_client,
        grpc_client,
        ClosedLoop(raw, 2) as raw_load,
        ClosedLoop(via(http_client), 2) as http_load,
        ClosedLoop(via(grpc_client), 2) as grpc_load,
    ):
        time.sleep(3)
        killed_at = time.monotonic()
        kill_actor(victim)

        def replaced() -> bool:
            now = deployment_replicas("Ingress")
            return len(now) == len(replicas) and victim not in now and session_healthy(service)

        wait_for(replaced, READY_TIMEOUT_S, what="replica replaced and service ready")
        recovery_s = time.monotonic() - killed_at
        time.sleep(2)  # and it serves under load again
        settled = time.monotonic()
    answers = [o for _, _, o in raw_load.records if isinstance(o, tuple)]
    # A request in flight on the killed replica that HAProxy did not resend reaches a raw client as a
    # connection closed without an answer (seen once in ~270 requests in one of three runs; the client
    # library retries it, below). Never an error page, and rare.
    dropped = [repr(o) for _, _, o in raw_load.records if not isinstance(o, tuple)]
    statuses = [o[0] for o in answers]
    print(
        f"model replica killed under load: back to full health in {recovery_s:.1f}s; raw HTTP answers "
        f"{statuses.count(200)} x 200, {statuses.count(503)} x 503, {len(dropped)} connections closed "
        f"without an answer; client library: {len(http_load.records)} HTTP + "
        f"{len(grpc_load.records)} gRPC calls"
    )
    assert set(statuses) <= {200, 503}, [o for o in answers if o[0] not in (200, 503)][:3]
    assert all("RemoteProtocolError" in d for d in dropped), dropped[:3]
    assert len(dropped) <= max(1, len(raw_load.records) // 100), dropped
    for outcome in answers:
        if outcome[0] == 503:  # what the client library retries: the documented answer, never a 500
            assert outcome[1:3] in {("1", "unavailable"), ("1", "overloaded")}, outcome
    check_results([o for _, _, o in http_load.records], expected)
    check_results([o for _, _, o in grpc_load.records], expected)
    after = [o for s, _, o in http_load.records + grpc_load.records if s > settled - 2]
    assert after, "no requests were served after the recovery"
    assert len(http_load.records) + len(grpc_load.records) >= 10
    assert recovery_s < RECOVERY_BOUND_S, recovery_s
    now = deployment_replicas("Ingress")
    assert victim not in now and victim_pid not in now.values() and len(now) == len(replicas)


def test_redeploy_with_a_changed_config_fails_no_request(service, images):
    """serve.run with a new model version while requests flow: in-flight ones complete, none fails."""
    bodies, expected = images
    app = "redeploy"
    model_path = f"/{app}/v1/models/{MODEL}"
    with (
        temp_repository("redeploy-v1", deployment={"num_cpus": 0}) as v1,
        temp_repository("redeploy-v2", deployment={"num_cpus": 0}, version="2") as v2,
        extra_app(service, app, light_args(v1)) as url,
        httpx.Client(base_url=service.url, timeout=120) as raw_http,
    ):
        assert raw_http.get(model_path).json()["version"] == "1"
        stub = service.grpc_stub()

        def over_http(i: int):
            r = raw_http.post(
                f"{model_path}/segment", content=bodies[i % 4], headers={"content-type": "image/png"}
            )
            return i % 4, r.status_code, r

        def over_grpc(i: int):
            try:
                request = pb.SegmentRequest(model=MODEL, image=bodies[i % 4])
                response = stub.Segment(request, timeout=120, metadata=[("application", app)])
                return i % 4, "OK", response
            except grpc.RpcError as e:
                return i % 4, e.code().name, e.details()

        with ClosedLoop(over_http, 3) as http_load, ClosedLoop(over_grpc, 1) as grpc_load:
            time.sleep(2)
            started = time.monotonic()
            deploy_app(app, light_args(v2))  # returns once the new version is RUNNING
            wait_for(lambda: raw_http.get(model_path).json()["version"] == "2", READY_TIMEOUT_S, what="v2")
            switched_s = time.monotonic() - started
            time.sleep(2)
        print(
            f"redeploy: switched in {switched_s:.1f}s; {len(http_load.records)} HTTP and "
            f"{len(grpc_load.records)} gRPC requests during the run"
        )
        assert raw_http.get(f"/{app}/readyz").status_code == 200 and url
    failed = [
        (o[1], str(o[2])[:200])
        for _, _, o in http_load.records + grpc_load.records
        if o[1] not in (200, "OK")
    ]
    assert not failed, failed[:5]
    during = [o for s, e, o in http_load.records if s < started + switched_s and e > started]
    assert during, "no request overlapped the switch"
    for i, _, r in (o for _, _, o in http_load.records):
        np.testing.assert_array_equal(result_from_json(r.json()).labels, expected[i])
    for i, _, response in (o for _, _, o in grpc_load.records):
        np.testing.assert_array_equal(decode_label_png(response.mask_png), expected[i])


def test_a_replica_death_wrapped_by_serve_is_classified_unavailable():
    """What the ingress saw when the segmenter was killed between the codec's two calls: Ray Serve's
    "upstream actor died before finishing a dependent task", raised from the ActorDiedError."""
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import RayServeException

    from service.api.errors import grpc_status, http_headers, to_service_error

    try:
        try:
            raise ActorDiedError()
        except ActorDiedError as died:
            raise RayServeException(
                "Request to deployment 'ImageCodec' failed because an upstream actor died"
            ) from died
    except RayServeException as e:
        error = to_service_error(e)
    assert error.code == "unavailable" and error.http_status == 503
    assert http_headers(error) == {"Retry-After": "1"} and grpc_status(error) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("kind", ["ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError"])
def test_a_result_lost_with_its_node_is_classified_unavailable(kind):
    """An intermediate result that lived on a crashed node: retryable 503 / UNAVAILABLE, not a 500."""
    import ray.exceptions

    from service.api.errors import grpc_status, to_service_error

    error = to_service_error(getattr(ray.exceptions, kind)("ab" * 14, None, ""))
    assert error.code == "unavailable" and error.http_status == 503
    assert grpc_status(error) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "flags",
    [
        # make test: a crash of a node of the shipped CPU topology (~70 s); make test-all: the others
        # (the split topology's node, a crash and a graceful removal; ~100 s each). Both topologies'
        # answers to a lost replica run in make test (test_topology, the replica kill above).
        pytest.param([], id="removed-gracefully-split", marks=pytest.mark.extended),
        pytest.param(["--crash"], id="crashed-split", marks=pytest.mark.extended),
        pytest.param(["--crash", "--fused"], id="crashed-fused"),
    ],
)
def test_multinode_worker_node_lost_under_load(flags):
    """tests/integration/multinode_scenario.py in its own process (and its own Ray cluster of 3 nodes):
    a worker node removed as Kubernetes deletes a pod (SIGTERM first), or crashed (SIGKILL), in the GPU
    layout's split topology and the CPU's fused one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "integration" / "multinode_scenario.py"), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    print(f"multinode: {summary}")
    assert summary["codec_deployed"] == ("--fused" not in flags), summary  # the topology really changed
    assert summary["spread_over_workers"] and summary["ingress_and_codec_on_head"], summary
    assert summary["client_calls"] >= 20 and summary["client_failures"] == [], summary
    assert summary["all_correct"], summary
    # As when one replica is killed: a request in flight on the crashed node that HAProxy could not
    # resend reaches a raw client as a closed connection or HAProxy's plain-text 500 (2 of 334 in one
    # run of five); the client library retried everything (client_failures above). Rare, and bounded.
    dropped = {s: n for s, n in summary["raw_counts"].items() if s not in ("200", "503")}
    assert all(s.startswith(("RemoteProtocolError", "JSONDecodeError")) for s in dropped), summary
    assert sum(dropped.values()) <= max(1, sum(summary["raw_counts"].values()) // 100), summary
    assert summary["raw_503_documented"], summary
    assert summary["final_segmenter_nodes_ok"] and summary["ready_after"], summary
    assert summary["recovered_s"] < RECOVERY_BOUND_S + 30, summary  # includes starting a new node
