"""The Open Inference Protocol's HTTP routes and gRPC methods over the real core and models, in this
process (no Ray): what each request gets, checked against ``/v1`` answers for the same images.

The Ray-served path, with tritonclient as the client, is tests/integration/test_oip.py."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json

import grpc
import numpy as np
import pytest
import torch

from service.api import grpc as grpc_api
from service.api.core import SegmentationCore
from service.api.http import build_http_app
from service.api.oip import grpc as oip_grpc
from service.api.oip import http as oip_http
from service.api.oip import infer as oip_infer
from service.api.oip import tensors
from service.config import parse_app_settings
from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.imaging.geometry import fit_to_policy
from service.imaging.panoptic_format import decode_panoptic_png
from service.models.registry import to_model_input
from service.training.shapes import make_sample
from service.types import SegmentOptions
from service.worker import LocalModels
from tests.conftest import png_bytes

MODELS = ["unet-shapes", "panoptic-shapes"]


def make_core(repository, names=MODELS, specs=None, **settings) -> SegmentationCore:
    app_settings = parse_app_settings(settings)
    specs = specs or {n: repository.get(n) for n in names}
    weights = {n: repository.weights_path(s) for n, s in specs.items()}
    core = SegmentationCore(
        repository, app_settings, list(specs), LocalModels.load(specs, weights, app_settings.limits)
    )
    core.specs = specs
    return core


@pytest.fixture(scope="module")
def core(repository):
    torch.set_num_threads(1)
    return make_core(repository)


@pytest.fixture(scope="module")
def client(core):
    from fastapi.testclient import TestClient

    app = build_http_app()
    app.include_router(oip_http.router)
    app.state.core = core
    with TestClient(app) as client:  # one event loop for the whole module (the batchers live on it)
        yield client


def image(seed: int, size=(96, 128)) -> np.ndarray:
    return make_sample(seed, size).image


def v1_labels(client, model: str, body: bytes) -> np.ndarray:
    answer = client.post(f"/v1/models/{model}/segment?format=raw", content=body).json()
    shape = answer["mask"]["shape"]
    return np.frombuffer(base64.b64decode(answer["mask"]["data"]), answer["mask"]["dtype"]).reshape(shape)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal pixels. A batched forward may round differently from a batch of one in the last
    float bits, so an argmax tie can flip on a boundary pixel: batched answers agree to >= 0.999."""
    assert a.shape == b.shape
    return float((a == b).mean())


def binary_request(inputs: list[tuple[dict, bytes]], **header) -> tuple[bytes, dict]:
    """An infer body with the binary tensor data extension, and its headers."""
    described = [
        {**d, "parameters": {**d.get("parameters", {}), "binary_data_size": len(b)}} for d, b in inputs
    ]
    text = json.dumps({**header, "inputs": described}).encode()
    return text + b"".join(b for _, b in inputs), {"Inference-Header-Content-Length": str(len(text))}


def split_binary(response) -> tuple[dict, dict[str, bytes]]:
    """The response's JSON header and each binary output's bytes."""
    size = int(response.headers["inference-header-content-length"])
    header, at, data = json.loads(response.content[:size]), size, {}
    for output in header["outputs"]:
        n = output.get("parameters", {}).get("binary_data_size")
        if n is not None:
            data[output["name"]] = response.content[at : at + n]
            at += n
    assert at == len(response.content)
    return header, data


# --- HTTP: metadata and health ---------------------------------------------------------------------------


def test_server_metadata_and_health(client):
    assert client.get("/v2").json() == {
        "name": "segserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_configuration"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/unet-shapes/ready").json() == {"name": "unet-shapes", "ready": True}
    assert client.get("/v2/models/unet-shapes/versions/1/ready").status_code == 200


def test_model_metadata_states_the_inputs_outputs_and_classes(client):
    meta = client.get("/v2/models/panoptic-shapes/versions/1").json()
    assert meta["name"] == "panoptic-shapes" and meta["versions"] == ["1"] and meta["platform"] == "pytorch"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
        {"name": "normalized", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "panoptic_ids", "segments"]
    classes = json.loads(meta["parameters"]["classes"])
    assert classes[4] == {"id": 4, "name": "stripes", "color": [245, 130, 48], "isthing": False}
    assert json.loads(meta["parameters"]["input"])["size_divisor"] == 16
    assert meta["parameters"]["task"] == "panoptic"


def test_model_config_is_tritons_shape(client):
    """max_batch_size 0: dims are the whole shapes (N first), as in the metadata; the image limit per
    request is the max_batch_size parameter."""
    config = client.get("/v2/models/unet-shapes/config").json()
    assert config["max_batch_size"] == 0 and config["parameters"]["max_batch_size"] == {"string_value": "8"}
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("image", "TYPE_STRING", [-1], True),
        ("pixels", "TYPE_UINT8", [-1, -1, -1, 3], True),
        ("normalized", "TYPE_FP32", [-1, 3, -1, -1], True),
    ]
    assert config["output"] == [{"name": "labels", "data_type": "TYPE_UINT8", "dims": [-1, -1, -1]}]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/nope", 404, "unknown model 'nope'"),
        ("/v2/models/unet-shapes/versions/2", 404, "has no version '2'; it serves version '1'"),
        ("/v2/models/nope/ready", 404, "unknown model 'nope'"),
        ("/v2/models/unet-shapes/versions/3/config", 404, "has no version '3'"),
    ],
)
def test_metadata_errors_are_the_protocols_error_object(client, path, status, message):
    response = client.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and message in response.json()["error"]


# --- HTTP: inference --------------------------------------------------------------------------------------


def test_bytes_input_as_json_base64_equals_v1(client):
    body = png_bytes(image(1))
    request = {
        "id": "req-7",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(body).decode()],
            }
        ],
    }
    answer = client.post("/v2/models/unet-shapes/infer", json=request)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    result = answer.json()
    assert (result["id"], result["model_name"], result["model_version"]) == ("req-7", "unet-shapes", "1")
    (labels,) = result["outputs"]
    assert (labels["name"], labels["datatype"], labels["shape"]) == ("labels", "UINT8", [1, 96, 128])
    served = np.array(labels["data"], np.uint8).reshape(1, 96, 128)
    assert np.array_equal(served[0], v1_labels(client, "unet-shapes", body))
    assert len(np.unique(served)) > 1  # the picture has shapes: not a blank map


def test_a_batch_of_pixels_with_binary_data_equals_v1_image_by_image(client):
    images = [image(seed) for seed in (2, 3, 4)]
    pixels = np.stack(images)
    body, headers = binary_request(
        [({"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape)}, pixels.tobytes())]
    )
    # gzip on the way in, as tritonclient's request_compression_algorithm sends it
    response = client.post(
        "/v2/models/unet-shapes/infer",
        content=gzip.compress(body),
        headers={**headers, "content-encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert "binary_data_size" not in response.text  # no binary output asked for: JSON
    served = np.array(response.json()["outputs"][0]["data"], np.uint8).reshape(3, 96, 128)
    for k, picture in enumerate(images):
        assert agreement(served[k], v1_labels(client, "unet-shapes", png_bytes(picture))) >= 0.999


def normalized_input(spec, picture: np.ndarray) -> np.ndarray:
    """The network's input for ``picture`` as the service computes it: FP32 [1, 3, H, W]."""
    fitted, geometry = fit_to_policy(picture, spec.input)
    assert geometry.scaled == geometry.original  # so the label map's size is the tensor's
    return to_model_input(torch.tensor(fitted)[None], spec.input.mean, spec.input.std).numpy()


def test_normalized_fp32_input_equals_v1(client, repository):
    picture = image(5, (96, 128))
    tensor = normalized_input(repository.get("unet-shapes"), picture)
    body, headers = binary_request(
        [({"name": "normalized", "datatype": "FP32", "shape": list(tensor.shape)}, tensor.tobytes())],
        parameters={"binary_data_output": True},
    )
    response = client.post("/v2/models/unet-shapes/infer", content=body, headers=headers)
    header, data = split_binary(response)
    assert header["outputs"][0]["shape"] == [1, 96, 128]
    served = np.frombuffer(data["labels"], np.uint8).reshape(96, 128)
    assert np.array_equal(served, v1_labels(client, "unet-shapes", png_bytes(picture)))


def test_panoptic_outputs_equal_v1s_id_png_and_segments(client):
    body = png_bytes(image(6))
    payload, headers = binary_request(
        [({"name": "image", "datatype": "BYTES", "shape": [1]}, len(body).to_bytes(4, "little") + body)]
    )
    response = client.post("/v2/models/panoptic-shapes/infer", content=payload, headers={**headers})
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["panoptic_ids"]["datatype"] == "INT32"
    ids = np.array(outputs["panoptic_ids"]["data"], np.int32).reshape(96, 128)
    v1 = client.post("/v1/models/panoptic-shapes/segment?format=coco_panoptic", content=body).json()
    assert np.array_equal(ids, decode_panoptic_png(base64.b64decode(v1["mask"]["data"])))
    assert json.loads(outputs["segments"]["data"][0]) == v1["segments"]
    labels = np.array(outputs["labels"]["data"], np.uint8).reshape(96, 128)
    assert np.array_equal(labels, v1_labels(client, "panoptic-shapes", body))


def test_outputs_are_chosen_and_binary_per_output(client):
    body = png_bytes(image(7))
    data = [base64.b64encode(body).decode()]
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": data,
            }
        ],
        "outputs": [{"name": "segments", "parameters": {"binary_data": True}}, {"name": "labels"}],
    }
    header, binary = split_binary(client.post("/v2/models/panoptic-shapes/infer", json=request))
    assert [o["name"] for o in header["outputs"]] == ["segments", "labels"]
    assert "data" in header["outputs"][1] and "data" not in header["outputs"][0]
    (segments,) = tensors.from_raw("segments", binary["segments"], "BYTES", (1,))
    assert isinstance(json.loads(segments), list)


def bytes_input(*bodies: bytes) -> dict:
    data = [base64.b64encode(b).decode() for b in bodies]
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(bodies)],
        "parameters": {"content_type": "base64"},
        "data": data,
    }


@pytest.mark.parametrize(
    ("model", "request_body", "status", "message"),
    [
        ("unet-shapes", {"inputs": []}, 400, "send exactly one input"),
        (
            "unet-shapes",
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 1, 3], "data": [0, 0, 0]}]},
            400,
            "must be UINT8, got FP32",
        ),
        (
            "unet-shapes",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 4}]},
            400,
            "must have shape",
        ),
        ("unet-shapes", {"inputs": [bytes_input(b"not an image")]}, 400, "not a recognised image"),
        (
            "unet-shapes",
            {"inputs": [bytes_input(png_bytes(image(1)), png_bytes(image(1, (64, 64))))]},
            400,
            "one size",
        ),
        (
            "unet-shapes",
            {
                "inputs": [
                    {"name": "normalized", "datatype": "FP32", "shape": [1, 3, 8, 24], "data": [0.0] * 576}
                ]
            },
            400,
            "multiples of 16",
        ),
        (
            "unet-shapes",
            {"inputs": [bytes_input(b"x")], "outputs": [{"name": "bogus"}]},
            400,
            "unknown output 'bogus'",
        ),
        (
            "unet-shapes",
            {"inputs": [bytes_input(b"x")], "parameters": {"timeout": -3}},
            400,
            "'timeout' must be",
        ),
        ("unet-shapes", {"inputs": "nope"}, 400, "'inputs' array"),
        ("nope", {"inputs": []}, 404, "unknown model 'nope'"),
    ],
)
def test_bad_requests_get_the_protocols_error(client, model, request_body, status, message):
    response = client.post(f"/v2/models/{model}/infer", json=request_body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (
            b'{"inputs": []}xx',
            {"Inference-Header-Content-Length": "14"},
            400,
            "2 bytes of binary data are not claimed",
        ),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, 400, "must be a byte count within"),
        (b"{}", {"content-encoding": "br"}, 415, "content-encoding 'br'"),
        (b"\x1f\x8b garbage", {"content-encoding": "gzip"}, 400, "does not inflate"),
    ],
)
def test_malformed_bodies(client, body, headers, status, message):
    response = client.post("/v2/models/unet-shapes/infer", content=body, headers=headers)
    assert response.status_code == status and message in response.json()["error"]


def test_a_too_large_body_is_a_413_even_inflated(repository):
    from fastapi.testclient import TestClient

    core = make_core(repository, ["unet-shapes"], limits={"max_body_bytes": 16384, "max_image_pixels": 1000})
    app = build_http_app()
    app.include_router(oip_http.router)
    app.state.core = core
    bomb = gzip.compress(b"{" + b" " * 100_000 + b"}")
    with TestClient(app) as client:
        inflated = client.post(
            "/v2/models/unet-shapes/infer", content=bomb, headers={"content-encoding": "gzip"}
        )
        pixels = client.post(
            "/v2/models/unet-shapes/infer",
            json={
                "inputs": [
                    {"name": "pixels", "datatype": "UINT8", "shape": [1, 40, 40, 3], "data": [0] * 4800}
                ]
            },
        )
    assert (
        inflated.status_code == 413 and "inflated body is over the limit of 16384" in inflated.json()["error"]
    )
    assert pixels.status_code == 413 and "over the limit of 1000 pixels" in pixels.json()["error"]


def test_keys_guard_everything_but_the_health_routes(repository, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("OIP_TEST_KEYS", "k1")
    core = make_core(repository, ["unet-shapes"], api_keys_env="OIP_TEST_KEYS")
    app = build_http_app()
    app.include_router(oip_http.router)
    app.state.core = core
    with TestClient(app) as client:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200
        for method, path in [
            ("GET", "/v2"),
            ("GET", "/v2/models/unet-shapes"),
            ("GET", "/v2/models/unet-shapes/ready"),
            ("GET", "/v2/models/unet-shapes/config"),
            ("POST", "/v2/models/unet-shapes/infer"),
        ]:
            anonymous = client.request(method, path, json={"inputs": []})
            assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
            assert anonymous.json() == {"error": "missing or invalid API key"}
            keyed = client.request(method, path, json={"inputs": []}, headers={"authorization": "Bearer k1"})
            assert keyed.status_code in (200, 400), (path, keyed.text)


# --- the batcher sees N items -----------------------------------------------------------------------------


def test_the_images_of_one_request_are_items_of_the_batcher_with_other_requests(repository):
    """A batch window: the three images of an OIP request and a /v1-style request in the same window
    are one forward pass of four."""
    spec = repository.get("unet-shapes")
    slow = spec.model_copy(
        update={"batching": spec.batching.model_copy(update={"batch_wait_timeout_s": 0.5})}
    )
    core = make_core(repository, specs={"unet-shapes": slow})
    pixels = np.stack([image(seed) for seed in (8, 9, 10)])
    request = oip_infer.InferRequest(inputs=[oip_infer.InputTensor("pixels", "UINT8", pixels.shape, pixels)])

    async def both():
        deadline = core.deadline(None)
        other = core.segment(
            slow,
            png_bytes(image(11)),
            None,
            SegmentOptions(model="unet-shapes", format="raw", deadline=deadline),
        )
        return await asyncio.gather(oip_infer.infer(core, slow, request, "r", deadline, "oip_http"), other)

    answer, other = asyncio.run(both())
    assert [r.batch_size for r in answer.results] == [4, 4, 4] and other.batch_size == 4


def test_an_overloaded_model_is_a_503_with_retry_after_and_resource_exhausted(repository):
    """The fused worker admits max_ongoing + max_queued requests; the images of one request count each."""
    from fastapi.testclient import TestClient

    spec = repository.get("unet-shapes")
    tight = spec.model_copy(
        update={
            "deployment": spec.deployment.model_copy(
                update={"max_ongoing_requests": 1, "max_queued_requests": 0}
            )
        }
    )
    core = make_core(repository, specs={"unet-shapes": tight})
    app = build_http_app()
    app.include_router(oip_http.router)
    app.state.core = core
    pixels = np.stack([image(1)] * 2)
    body = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.reshape(-1).tolist(),
            }
        ]
    }
    with TestClient(app) as client:
        response = client.post("/v2/models/unet-shapes/infer", json=body)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "at capacity" in response.json()["error"]
    request = pb.ModelInferRequest(model_name="unet-shapes")
    request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    core = make_core(repository, specs={"unet-shapes": tight})  # fresh batchers for a fresh event loop
    _, context = asyncio.run(unary(core, "ModelInfer", request))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- gRPC -------------------------------------------------------------------------------------------------


class FakeContext:
    """What the wrapper uses of Ray Serve's gRPC context: metadata in, status and trailers out."""

    def __init__(self, metadata: dict[str, str] | None = None) -> None:
        self.metadata = metadata or {}
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailers: list = []

    def invocation_metadata(self):
        return list(self.metadata.items())

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, trailers):
        self.trailers = trailers

    def request_id(self):
        return "ray-id"


async def unary(core, name: str, request, metadata=None):
    context = FakeContext(metadata)
    return await grpc_api.unary(core, name, request, context, oip_grpc.METHODS), context


LOOP = asyncio.new_event_loop()
"""The gRPC tests' one event loop: a model's batcher serves the loop it first ran on."""


def call(core, name: str, request, metadata=None):
    return LOOP.run_until_complete(unary(core, name, request, metadata))


@pytest.fixture(scope="module", autouse=True)
def close_loop():
    """After the module: stop the batchers' tasks left on LOOP, then close it."""
    yield
    pending = asyncio.all_tasks(LOOP)
    for task in pending:
        task.cancel()
    if pending:
        LOOP.run_until_complete(asyncio.wait(pending))
    LOOP.close()


@pytest.fixture(scope="module")
def grpc_core(repository):
    return make_core(repository)  # batchers of its own, on LOOP (the HTTP client's run on its portal's loop)


def test_grpc_metadata_health_and_config(grpc_core):
    meta, context = call(grpc_core, "ModelMetadata", pb.ModelMetadataRequest(name="unet-shapes"))
    assert context.code == grpc.StatusCode.OK
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs][1] == (
        "pixels",
        "UINT8",
        [-1, -1, -1, 3],
    )
    assert json.loads(meta.parameters["classes"].string_param)[1]["name"] == "circle"
    assert meta.parameters["max_batch_size"].int64_param == 8
    config, _ = call(grpc_core, "ModelConfig", pb.ModelConfigRequest(name="unet-shapes"))
    assert config.config.max_batch_size == 0 and config.config.input[0].optional
    assert list(config.config.input[1].dims) == [-1, -1, -1, 3]
    assert config.config.parameters["task"].string_value == "semantic"
    assert call(grpc_core, "ServerLive", pb.ServerLiveRequest())[0].live
    assert call(grpc_core, "ServerReady", pb.ServerReadyRequest())[0].ready
    assert call(grpc_core, "ModelReady", pb.ModelReadyRequest(name="panoptic-shapes", version="1"))[0].ready
    server, _ = call(grpc_core, "ServerMetadata", pb.ServerMetadataRequest())
    assert list(server.extensions) == ["binary_tensor_data", "model_configuration"]


def grpc_request(model: str, pictures: np.ndarray, typed: bool = False, **params) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="g-1")
    tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=list(pictures.shape))
    if typed:
        tensor.contents.uint_contents.extend(pictures.reshape(-1).tolist())
    else:
        request.raw_input_contents.append(pictures.tobytes())
    for key, value in params.items():
        request.parameters[key].bool_param = value
    return request


def test_grpc_infer_raw_and_typed_give_the_same_maps(grpc_core, client):
    pictures = np.stack([image(12), image(13)])
    raw, context = call(grpc_core, "ModelInfer", grpc_request("unet-shapes", pictures))
    assert (
        context.code == grpc.StatusCode.OK and raw.id == "g-1" and ("x-request-id", "g-1") in context.trailers
    )
    (output,) = raw.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("labels", "UINT8", [2, 96, 128])
    maps = np.frombuffer(raw.raw_output_contents[0], np.uint8).reshape(2, 96, 128)
    typed, _ = call(
        grpc_core, "ModelInfer", grpc_request("unet-shapes", pictures, typed=True, binary_data_output=False)
    )
    assert not typed.raw_output_contents
    assert np.array_equal(
        np.array(typed.outputs[0].contents.uint_contents, np.uint8).reshape(2, 96, 128), maps
    )
    for k in range(2):
        assert agreement(maps[k], v1_labels(client, "unet-shapes", png_bytes(pictures[k]))) >= 0.999


@pytest.mark.parametrize(
    ("request_", "metadata", "code", "message"),
    [
        (pb.ModelInferRequest(model_name="nope"), None, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (
            pb.ModelInferRequest(model_name="unet-shapes", model_version="4"),
            None,
            grpc.StatusCode.NOT_FOUND,
            "no version '4'",
        ),
        (
            pb.ModelInferRequest(model_name="unet-shapes"),
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one input",
        ),
        (
            pb.ModelInferRequest(model_name="unet-shapes", raw_input_contents=[b"x"]),
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "1 raw_input_contents for 0 inputs",
        ),
        (
            grpc_request("unet-shapes", np.zeros((1, 16, 16, 3), np.uint8)),
            {"x-timeout-ms": "0.001"},
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "deadline",
        ),
    ],
)
def test_grpc_errors_are_status_codes(grpc_core, request_, metadata, code, message):
    _, context = call(grpc_core, "ModelInfer", request_, metadata)
    assert context.code == code and message in context.details


def test_fp16_needs_raw_contents(grpc_core):
    request = pb.ModelInferRequest(model_name="unet-shapes")
    request.inputs.add(name="normalized", datatype="FP16", shape=[1, 3, 16, 16])
    _, context = call(grpc_core, "ModelInfer", request)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents only" in context.details


def test_grpc_needs_the_key_except_for_health(repository, monkeypatch):
    monkeypatch.setenv("OIP_TEST_KEYS", "k1")
    core = SegmentationCore(
        repository, parse_app_settings({"api_keys_env": "OIP_TEST_KEYS"}), ["unet-shapes"], None
    )
    for name, request in [
        ("ModelMetadata", pb.ModelMetadataRequest(name="unet-shapes")),
        ("ModelInfer", pb.ModelInferRequest(model_name="unet-shapes")),
    ]:
        _, context = call(core, name, request)
        assert context.code == grpc.StatusCode.UNAUTHENTICATED
    assert call(core, "ServerLive", pb.ServerLiveRequest())[0].live


# --- an instance model ------------------------------------------------------------------------------------


@pytest.mark.slow  # a Mask R-CNN (ResNet-50) built, saved (170 MB) and loaded: ~10 s on a quiet machine
def test_an_instance_model_answers_its_id_map_and_instances(tmp_path):
    """The tiny Mask R-CNN of tests/instance_entry.py (seeded random weights, score threshold 0, so it
    detects): OIP's ``instance_ids`` and ``instances`` equal the core's raw /v1 answer."""
    import yaml

    from service.config import ModelSpec, load_repository
    from service.models.registry import build_model, save_weights
    from tests.instance_entry import instance_entry

    entry = instance_entry()
    torch.manual_seed(0)
    save_weights(build_model(ModelSpec.model_validate(entry)), tmp_path / entry["weights"])
    (tmp_path / "repository.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    repository = load_repository(tmp_path / "repository.yaml")
    core = make_core(repository, [entry["name"]])
    spec = core.spec(entry["name"])
    body = png_bytes(image(14, (90, 120)))
    request = oip_infer.InferRequest(inputs=[oip_infer.InputTensor("image", "BYTES", (1,), [body])])

    async def both():
        deadline = core.deadline(None)
        answer = await oip_infer.infer(core, spec, request, "i", deadline, "oip_grpc")
        v1 = await core.segment(
            spec, body, None, SegmentOptions(model=spec.name, format="raw", deadline=deadline)
        )
        return answer, v1

    answer, v1 = asyncio.run(both())
    ids, instances = answer.outputs
    assert (ids.name, ids.datatype, ids.shape) == ("instance_ids", "UINT8", [1, 90, 120])
    assert np.array_equal(ids.values[0], np.frombuffer(v1.mask_raw, v1.mask_dtype).reshape(90, 120))
    described = json.loads(instances.values[0])
    assert described == v1.instances and len(described) == 5  # max_detections, all kept at threshold 0
    assert set(np.unique(ids.values)) <= {0, *(d["id"] for d in described)}
