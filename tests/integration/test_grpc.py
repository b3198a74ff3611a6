"""The gRPC API through Ray Serve's gRPC proxy: same answers as HTTP and the direct call, streams, errors."""

from __future__ import annotations

import base64

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.training.semantic import held_out_seeds
from service.training.shapes import make_sample
from tests.conftest import jpeg_bytes, png_bytes
from tests.integration.helpers import direct_labels

pytestmark = pytest.mark.integration
MODEL = "unet-shapes"


def call(stub, request, timeout=60, metadata=None):
    return stub.Segment(request, timeout=timeout, metadata=metadata)


def test_unary_equals_http_and_the_direct_call(service, repository):
    stub = service.grpc_stub()
    with service.http() as http:
        for seed in held_out_seeds(3):
            body = jpeg_bytes(make_sample(seed, (150, 200)).image)
            response, rpc = stub.Segment.with_call(pb.SegmentRequest(model=MODEL, image=body), timeout=60)
            labels = decode_label_png(response.mask_png)
            assert (response.width, response.height) == (200, 150)
            over_http = http.post(
                f"/v1/models/{MODEL}/segment", content=body, headers={"content-type": "image/jpeg"}
            )
            np.testing.assert_array_equal(
                labels, decode_label_png(base64.b64decode(over_http.json()["mask"]["data"]))
            )
            np.testing.assert_array_equal(labels, direct_labels(repository, MODEL, body))
            assert sum(c.pixels for c in response.classes) == 200 * 150
            assert {"decode", "forward", "encode", "total"} <= set(response.timings_ms)
            trailing = dict(rpc.trailing_metadata())
            assert trailing["x-request-id"] == response.request_id


def test_request_id_from_metadata_is_kept(service):
    stub = service.grpc_stub()
    body = png_bytes(make_sample(1, (96, 128)).image)
    response = call(
        stub, pb.SegmentRequest(model=MODEL, image=body), metadata=[("x-request-id", "trace-me-42")]
    )
    assert response.request_id == "trace-me-42"


def test_raw_and_rle_formats(service):
    stub = service.grpc_stub()
    body = png_bytes(make_sample(2, (96, 128)).image)
    png = decode_label_png(call(stub, pb.SegmentRequest(model=MODEL, image=body)).mask_png)
    raw = call(stub, pb.SegmentRequest(model=MODEL, image=body, format=pb.MASK_FORMAT_RAW))
    np.testing.assert_array_equal(np.frombuffer(raw.mask_raw, raw.mask_dtype).reshape(96, 128), png)
    rle = call(stub, pb.SegmentRequest(model=MODEL, image=body, format=pb.MASK_FORMAT_RLE))
    assert sorted(r.class_id for r in rle.rles) == sorted(np.unique(png).tolist())


def test_stream_keeps_order_and_frame_ids(service, repository):
    stub = service.grpc_stub()
    frames = [(f"frame-{i:03d}", png_bytes(make_sample(500 + i, (96, 128)).image)) for i in range(8)]
    frames.insert(3, ("frame-bad", b"not an image"))
    requests = (pb.SegmentRequest(model=MODEL, image=img, frame_id=fid) for fid, img in frames)
    responses = list(stub.SegmentStream(requests, timeout=120))
    assert [r.frame_id for r in responses] == [fid for fid, _ in frames]
    for (fid, img), r in zip(frames, responses, strict=True):
        if fid == "frame-bad":
            assert r.error.code == "invalid_image" and r.error.message
            continue
        assert not r.error.code
        np.testing.assert_array_equal(decode_label_png(r.mask_png), direct_labels(repository, MODEL, img))


def test_models_match_the_repository(service, repository):
    stub = service.grpc_stub()
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert sorted(m.name for m in listed) == sorted(repository.names())
    info = stub.GetModel(pb.GetModelRequest(name=MODEL), timeout=30)
    spec = repository.get(MODEL)
    assert [(c.id, c.name, tuple(c.color)) for c in info.classes] == [
        (c.id, c.name, c.color) for c in spec.classes
    ]
    assert info.input.size == spec.input.size and info.task == "semantic"


def test_health_check_answers_serving(service):
    channel = grpc.insecure_channel(service.grpc_target)
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("what", "request_fields", "metadata", "code"),
    [
        ("garbage bytes", {"model": MODEL, "image": b"garbage"}, None, grpc.StatusCode.INVALID_ARGUMENT),
        ("missing image", {"model": MODEL}, None, grpc.StatusCode.INVALID_ARGUMENT),
        ("missing model", {"image": b"x"}, None, grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown model", {"model": "nope", "image": b"x"}, None, grpc.StatusCode.NOT_FOUND),
        (
            "bad deadline metadata",
            {"model": MODEL, "image": b"x"},
            [("x-timeout-ms", "soon")],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "deadline too short to finish",
            {"model": MODEL, "image": "good"},
            [("x-timeout-ms", "1")],
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ),
    ],
)
def test_error_statuses(service, what, request_fields, metadata, code):
    stub = service.grpc_stub()
    good = png_bytes(make_sample(4, (128, 128)).image)
    fields = {k: (good if v == "good" else v) for k, v in request_fields.items()}
    with pytest.raises(grpc.RpcError) as e:
        call(stub, pb.SegmentRequest(**fields), metadata=metadata)
    assert e.value.code() == code, (what, e.value.details())
    assert e.value.details()
    assert call(stub, pb.SegmentRequest(model=MODEL, image=good)).width == 128  # still serving


def test_client_deadline_is_honoured(service):
    """The caller's own deadline ends the call with DEADLINE_EXCEEDED (the proxy cancels the work)."""
    stub = service.grpc_stub()
    big = png_bytes(make_sample(5, (1024, 1024)).image)
    with pytest.raises(grpc.RpcError) as e:
        call(stub, pb.SegmentRequest(model=MODEL, image=big), timeout=0.005)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
