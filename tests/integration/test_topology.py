"""Both topologies serve the same answers: the session app (shipped config on CPU: fused, no codec
deployment) and an extra application "split" with ``topology: split`` (an ImageCodec deployment, the
GPU layout), over HTTP and gRPC, against the direct model call; a bad image gets the same error from
either; and the split app's graph really has its codec.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.training.shapes import make_sample
from tests.conftest import png_bytes
from tests.integration.apps import MODEL, SESSION_APP, extra_app, light_args, temp_repository
from tests.integration.helpers import direct_labels
from tests.integration.test_http import mask_of

pytestmark = pytest.mark.integration
APP = "split"


@pytest.fixture(scope="module")
def split_app(service):
    with (
        temp_repository(APP, deployment={"num_cpus": 0, "num_replicas": 1}) as path,
        extra_app(service, APP, light_args(path, topology="split")) as url,
    ):
        yield url


def deployments_of(app: str) -> set[str]:
    from ray import serve

    return set(serve.status().applications[app].deployments)


def test_the_session_app_is_fused_and_the_split_app_has_its_codec(service, split_app):
    assert deployments_of(SESSION_APP) == {"Ingress"}  # fused: the ingress replicas run the models
    assert deployments_of(APP) == {"Ingress", "ImageCodec", f"Segmenter-{MODEL}"}


@pytest.mark.parametrize("seed", [11, 12])
def test_both_topologies_answer_the_direct_model_call_over_http(service, split_app, repository, seed):
    body = png_bytes(make_sample(seed, (120, 160)).image)
    expected = direct_labels(repository, MODEL, body)
    with service.http() as client:
        for base in (service.url, split_app):
            r = client.post(
                f"{base}/v1/models/{MODEL}/segment", content=body, headers={"content-type": "image/png"}
            )
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(mask_of(r), expected)


@pytest.mark.parametrize(
    "picture, by_value",
    [
        # ~2.4 MB of noise: too large to go by value, it takes the object store.
        (lambda: np.random.default_rng(3).integers(0, 256, (900, 900, 3), dtype=np.uint8), False),
        # A few kB that decode to 4.5 MP: by value, and its 4.5 MB label map (above Ray's 4 MiB default
        # for gRPC messages between replicas) comes back that way too.
        (lambda: np.full((1500, 3000, 3), 90, np.uint8), True),
    ],
    ids=["large-body-by-reference", "small-body-large-answer-by-value"],
)
def test_both_transports_of_the_split_topology_answer_the_direct_model_call(
    service, split_app, repository, picture, by_value
):
    """The split topology sends arguments of at most ``BY_VALUE_MAX_BYTES`` over Ray Serve's gRPC
    transport and larger ones by reference (service/deployments/split.py)."""
    from service.deployments.split import BY_VALUE_MAX_BYTES

    body = png_bytes(picture())
    assert (len(body) <= BY_VALUE_MAX_BYTES) == by_value
    expected = direct_labels(repository, MODEL, body)
    with service.http() as client:
        r = client.post(
            f"{split_app}/v1/models/{MODEL}/segment", content=body, headers={"content-type": "image/png"}
        )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(mask_of(r), expected)


def test_a_small_file_of_a_tiled_picture_gets_the_fused_topologys_answer(service, split_app):
    """A flat 2100 x 2100 PNG (tiled: >= 2048 px) is prepared by value (13 MB of pixels come back to
    the ingress), then segmented by reference; both topologies give the same label map."""
    body = png_bytes(np.full((2100, 2100, 3), 200, np.uint8))
    with service.http() as client:
        answers = [
            client.post(
                f"{base}/v1/models/{MODEL}/segment", content=body, headers={"content-type": "image/png"}
            )
            for base in (service.url, split_app)
        ]
    assert [r.status_code for r in answers] == [200, 200], answers[-1].text
    fused, split = (mask_of(r) for r in answers)
    assert fused.shape == (2100, 2100)
    np.testing.assert_array_equal(split, fused)


def test_both_topologies_answer_the_direct_model_call_over_grpc(service, split_app, repository):
    body = png_bytes(make_sample(13, (100, 90)).image)
    expected = direct_labels(repository, MODEL, body)
    stub = service.grpc_stub()
    for app in (SESSION_APP, APP):
        response = stub.Segment(
            pb.SegmentRequest(model=MODEL, image=body, content_type="image/png"),
            metadata=[("application", app)],
            timeout=60,
        )
        np.testing.assert_array_equal(decode_label_png(response.mask_png), expected)


def test_the_request_id_reaches_every_deployment_of_the_split_topology(service, split_app):
    """The id the caller sent is in the log lines of the ingress, the codec and the segmenter."""
    import time

    from tests.integration.test_metrics import lines_with

    request_id = f"split-trace-{time.monotonic_ns()}"
    with service.http() as client:
        r = client.post(
            f"{split_app}/v1/models/{MODEL}/segment",
            content=png_bytes(make_sample(15, (64, 64)).image),
            headers={"content-type": "image/png", "x-request-id": request_id},
        )
    assert r.status_code == 200 and r.headers["x-request-id"] == request_id
    wanted = {"Ingress", "ImageCodec", f"Segmenter-{MODEL}"}
    deadline = time.monotonic() + 20
    while not wanted <= set(found := lines_with(request_id, APP)) and time.monotonic() < deadline:
        time.sleep(1)
    assert wanted <= set(found), {k: v[:1] for k, v in found.items()}


def test_a_bad_image_gets_the_same_error_from_both_topologies(service, split_app):
    truncated = png_bytes(make_sample(14, (64, 64)).image)[:100]
    with service.http() as client:
        answers = [
            client.post(
                f"{base}/v1/models/{MODEL}/segment", content=truncated, headers={"content-type": "image/png"}
            )
            for base in (service.url, split_app)
        ]
    assert [r.status_code for r in answers] == [400, 400]
    assert {r.json()["error"]["code"] for r in answers} == {"invalid_image"}
    stub = service.grpc_stub()
    for app in (SESSION_APP, APP):
        with pytest.raises(grpc.RpcError) as e:
            stub.Segment(
                pb.SegmentRequest(model=MODEL, image=truncated, content_type="image/png"),
                metadata=[("application", app)],
                timeout=60,
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
