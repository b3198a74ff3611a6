"""API keys over HTTP and gRPC on an application deployed with ``api_keys_file`` and ``api_keys_env``
(keys from both are accepted); no pickle from the wire.

The keyed application ("secure", at /secure) is deployed next to the session's open one and deleted
afterwards. With two applications, gRPC calls name theirs in the ``application`` metadata.
"""

from __future__ import annotations

import pickle

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from segserve_client import ClientError, GrpcClient, HttpClient

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.training.shapes import make_sample
from tests.conftest import png_bytes
from tests.integration.apps import (
    API_KEYS_ENV,
    ENV_API_KEYS,
    MODEL,
    SESSION_APP,
    extra_app,
    light_args,
    temp_repository,
)

pytestmark = pytest.mark.integration
APP = "secure"
FILE_KEYS = ("k3y-0ne-with-some-length", "second-key")
KEYS = FILE_KEYS + ENV_API_KEYS
GOOD = png_bytes(make_sample(8, (64, 96)).image)


@pytest.fixture(scope="module")
def secure(service, tmp_path_factory):
    """The keyed application: yields its base URL. Keys in a file, one per line (blank lines ignored),
    and in an env var (comma-separated) that the Ray workers inherited (tests/integration/conftest.py)."""
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text(f"  {FILE_KEYS[0]}  \n\n{FILE_KEYS[1]}\n")
    with temp_repository(APP, deployment={"num_cpus": 0}) as repository:
        args = light_args(repository, api_keys_file=str(keys_file), api_keys_env=API_KEYS_ENV)
        with extra_app(service, APP, args) as url:
            yield url


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# --- HTTP -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "headers"),
    [
        ("missing key", {}),
        ("wrong key", bearer("not-a-key")),
        ("a key's prefix", bearer(KEYS[0][:-1])),
        ("a key with a suffix", bearer(KEYS[0] + "x")),
        ("right key, wrong scheme", {"authorization": f"Basic {KEYS[0]}"}),
        ("right key, no scheme", {"authorization": KEYS[0]}),
        ("empty bearer", {"authorization": "Bearer"}),
    ],
)
def test_http_refuses_without_a_valid_key(service, secure, what, headers):
    with service.http() as c:
        for method, path, body in [
            ("POST", f"/{APP}/v1/models/{MODEL}/segment", GOOD),
            ("GET", f"/{APP}/v1/models", None),
            ("GET", f"/{APP}/v1/models/{MODEL}", None),
        ]:
            r = c.request(method, path, content=body, headers={"content-type": "image/png", **headers})
            assert r.status_code == 401, (what, path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.headers["www-authenticate"] == "Bearer"
            error = r.json()["error"]
            assert error["code"] == "unauthenticated" and error["message"] and error["request_id"]
            assert not any(key in r.text for key in KEYS)


def test_http_accepts_each_configured_key(service, secure):
    with service.http() as c:
        for key in KEYS:
            r = c.post(f"/{APP}/v1/models/{MODEL}/segment", content=GOOD, headers=bearer(key))
            assert r.status_code == 200, r.text
            assert (r.json()["height"], r.json()["width"]) == (64, 96)
            assert c.get(f"/{APP}/v1/models", headers=bearer(key)).status_code == 200


def test_http_health_endpoints_stay_open(service, secure):
    with service.http() as c:
        assert c.get(f"/{APP}/healthz").json() == {"status": "ok"}
        assert c.get(f"/{APP}/readyz").status_code == 200


def test_the_client_library_sends_the_key_and_does_not_retry_a_401(service, secure):
    with HttpClient(secure, api_key=ENV_API_KEYS[1], timeout_s=60) as client:
        assert client.segment(GOOD, model=MODEL).labels.shape == (64, 96)
    with HttpClient(secure, api_key="wrong", timeout_s=60) as client, pytest.raises(ClientError) as e:
        client.segment(GOOD, model=MODEL)
    assert e.value.status == 401 and e.value.code == "unauthenticated" and e.value.attempts == 1


# --- gRPC -------------------------------------------------------------------------------------------------


def metadata(key: str | None = None, raw: str | None = None) -> list[tuple[str, str]]:
    meta = [("application", APP)]
    if key is not None:
        meta.append(("authorization", f"Bearer {key}"))
    if raw is not None:
        meta.append(("authorization", raw))
    return meta


def unary_calls(stub, meta):
    return {
        "Segment": lambda: stub.Segment(
            pb.SegmentRequest(model=MODEL, image=GOOD), timeout=60, metadata=meta
        ),
        "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=60, metadata=meta),
        "GetModel": lambda: stub.GetModel(pb.GetModelRequest(name=MODEL), timeout=60, metadata=meta),
    }


def stream_once(stub, meta) -> list[pb.SegmentResponse]:
    frames = iter([pb.SegmentRequest(model=MODEL, image=GOOD, frame_id="f")])
    return list(stub.SegmentStream(frames, timeout=60, metadata=meta))


REFUSED = [
    ("missing key", metadata()),
    ("wrong key", metadata("not-a-key")),
    ("right key, no scheme", metadata(raw=KEYS[0])),
]


@pytest.mark.parametrize(("what", "meta"), REFUSED)
def test_grpc_refuses_without_a_valid_key(service, secure, what, meta):
    for method, invoke in unary_calls(service.grpc_stub(), meta).items():
        with pytest.raises(grpc.RpcError) as e:
            invoke()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (what, method, e.value.code())
        assert "API key" in e.value.details()


@pytest.mark.parametrize(("what", "meta"), REFUSED)
def test_grpc_stream_refuses_without_a_valid_key(service, secure, what, meta):
    with pytest.raises(grpc.RpcError) as e:
        responses = stream_once(service.grpc_stub(), meta)
        assert not responses, "an unauthenticated stream was served"
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (what, e.value.code())


def test_grpc_accepts_each_configured_key(service, secure):
    for key in KEYS:
        stub = service.grpc_stub()
        answers = {method: invoke() for method, invoke in unary_calls(stub, metadata(key)).items()}
        assert (answers["Segment"].height, answers["Segment"].width) == (64, 96)
        assert [m.name for m in answers["ListModels"].models] == [MODEL]
        assert answers["GetModel"].name == MODEL
        [frame] = stream_once(stub, metadata(key))
        assert frame.frame_id == "f" and not frame.error.code and frame.height == 64
    with GrpcClient(service.grpc_target, api_key=KEYS[0], application=APP, timeout_s=60) as client:
        assert client.segment(GOOD, model=MODEL).labels.shape == (64, 96)
        assert client.ready()


def test_grpc_health_check_stays_open(service, secure):
    channel = grpc.insecure_channel(service.grpc_target)
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=30, metadata=metadata()
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# --- nothing from the wire is unpickled ------------------------------------------------------------------


class _Marker:
    """Unpickling this creates a file: if the service ever unpickled request bytes, the file would exist."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_in_the_body_is_an_invalid_image_and_is_not_unpickled(service, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(str(marker)))
    with service.http() as c:
        for content_type in ["application/octet-stream", "image/png"]:
            r = c.post(f"/v1/models/{MODEL}/segment", content=payload, headers={"content-type": content_type})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
        r = c.post(
            f"/v1/models/{MODEL}/segment", files={"image": ("x.pkl", payload, "application/octet-stream")}
        )
        assert r.status_code == 400
    with pytest.raises(grpc.RpcError) as e:
        service.grpc_stub().Segment(
            pb.SegmentRequest(model=MODEL, image=payload), timeout=60, metadata=[("application", SESSION_APP)]
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not marker.exists()
