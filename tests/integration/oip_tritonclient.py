"""Run by tests/integration/test_oip.py with the python of a venv that has tritonclient (``python -I``:
neither the checkout nor the service's packages are importable; tritonclient pins protobuf < 7, the
service 7). Talks to the real service over HTTP and gRPC with tritonclient, as a Triton user would.

    python -I oip_tritonclient.py HTTP_HOST_PORT GRPC_TARGET WORKDIR

WORKDIR holds the inputs the test wrote (``semantic.png``, ``panoptic.png``, ``pixels.npy``,
``normalized.npy``); every output tensor goes to ``WORKDIR/out/<name>.npy`` (BYTES outputs as JSON
files) and one JSON report on stdout says what each call answered: metadata, readiness, errors.
"""

import json
import sys
import traceback
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

UNET, PANOPTIC = "unet-shapes", "panoptic-shapes"


def image_input(module, body: bytes, n: int = 1, binary: bool = True):
    tensor = module.InferInput("image", [n], "BYTES")
    data = np.array([body] * n, dtype=np.object_)
    tensor.set_data_from_numpy(data, **({"binary_data": binary} if module is thttp else {}))
    return tensor


def array_input(module, name: str, array: np.ndarray, datatype: str, binary: bool = True):
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, **({"binary_data": binary} if module is thttp else {}))
    return tensor


def outputs(module, names, binary: bool = True):
    if module is thttp:
        return [thttp.InferRequestedOutput(n, binary_data=binary) for n in names]
    return [tgrpc.InferRequestedOutput(n) for n in names]


def error_of(call) -> dict:
    """What a failing call raised: the status tritonclient reports and the server's message."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return {"status": "no error"}


def save(out: Path, tag: str, result, names) -> dict:
    shapes = {}
    for name in names:
        array = result.as_numpy(name)
        shapes[name] = [list(array.shape), str(array.dtype)]
        if array.dtype == np.object_:
            (out / f"{tag}-{name}.json").write_text(json.dumps([json.loads(v) for v in array.reshape(-1)]))
        else:
            np.save(out / f"{tag}-{name}.npy", array)
    return shapes


def session(kind: str, module, client, work: Path, out: Path) -> dict:
    semantic = (work / "semantic.png").read_bytes()
    panoptic = (work / "panoptic.png").read_bytes()
    pixels = np.load(work / "pixels.npy")
    normalized = np.load(work / "normalized.npy")
    json_kw = {"as_json": True} if module is tgrpc else {}
    report: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": [client.is_model_ready(UNET), client.is_model_ready(PANOPTIC, "1")],
        "server_metadata": client.get_server_metadata(**json_kw),
        "metadata": {m: client.get_model_metadata(m, **json_kw) for m in (UNET, PANOPTIC)},
        "config": client.get_model_config(UNET, **json_kw),
    }
    if module is thttp:
        report["model_ready"].append(client.is_model_ready("no-such-model"))
    else:
        report["unknown_model_ready"] = error_of(lambda: client.is_model_ready("no-such-model"))

    def infer(tag, model, inputs, names, binary=True, **kw):
        result = client.infer(model, inputs, outputs=outputs(module, names, binary), **kw)
        report[tag] = {
            "shapes": save(out, f"{kind}-{tag}", result, names),
            "response": result.get_response(**json_kw),
        }

    infer("image", UNET, [image_input(module, semantic)], ["labels"], request_id="oip-req-1")
    infer("pixels", UNET, [array_input(module, "pixels", pixels, "UINT8")], ["labels"])
    infer("normalized", UNET, [array_input(module, "normalized", normalized, "FP32")], ["labels"])
    infer("panoptic", PANOPTIC, [image_input(module, panoptic)], ["labels", "panoptic_ids", "segments"])
    infer("segments_only", PANOPTIC, [image_input(module, panoptic)], ["segments"])
    if module is thttp:  # JSON tensors both ways (BYTES in JSON would need UTF-8 text: pixels instead)
        infer(
            "pixels_json",
            UNET,
            [array_input(module, "pixels", pixels[:1], "UINT8", binary=False)],
            ["labels"],
            binary=False,
        )
    else:  # all outputs, none named: Triton's default
        result = client.infer(UNET, [image_input(module, semantic, n=2)])
        report["all_outputs"] = save(out, f"{kind}-all_outputs", result, ["labels"])
    report["errors"] = errors(module, client, semantic, pixels)
    return report


def errors(module, client, semantic: bytes, pixels: np.ndarray) -> dict:
    def infer(model, inputs, names=("labels",), **kw):
        return lambda: client.infer(model, inputs, outputs=outputs(module, names), **kw)

    pixels_fp32 = pixels.astype(np.float32)
    return {
        "unknown_model": error_of(infer("no-such-model", [image_input(module, semantic)])),
        "unknown_version": error_of(infer(UNET, [image_input(module, semantic)], model_version="7")),
        "wrong_datatype": error_of(infer(UNET, [array_input(module, "pixels", pixels_fp32, "FP32")])),
        "wrong_shape": error_of(
            infer(UNET, [array_input(module, "pixels", pixels[..., :2].copy(), "UINT8")])
        ),
        "unknown_input": error_of(infer(UNET, [array_input(module, "picture", pixels, "UINT8")])),
        "not_an_image": error_of(infer(UNET, [image_input(module, b"definitely not an image")])),
        "too_many_images": error_of(infer(UNET, [image_input(module, semantic, n=9)])),
        "unknown_output": error_of(infer(UNET, [image_input(module, semantic)], names=("mask",))),
        "deadline": error_of(infer(UNET, [image_input(module, semantic)], timeout=1)),
        "unknown_model_metadata": error_of(lambda: client.get_model_metadata("no-such-model")),
    }


def typed_contents(target: str, pixels: np.ndarray) -> dict:
    """A ModelInferRequest with typed contents (no raw_input_contents) asking for typed outputs, built
    with the stub tritonclient ships (Triton's own grpc_service.proto)."""
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=UNET, id="typed-1")
        tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=list(pixels.shape))
        tensor.contents.uint_contents.extend(pixels.reshape(-1).tolist())
        request.parameters["binary_data_output"].bool_param = False
        response = stub.ModelInfer(request, timeout=60)
    (output,) = response.outputs
    labels = np.array(output.contents.uint_contents, np.uint8).reshape(list(output.shape))
    return {"id": response.id, "raw": len(response.raw_output_contents), "labels": labels.tolist()}


def main(http_url: str, grpc_target: str, workdir: str) -> dict:
    work = Path(workdir)
    out = work / "out"
    out.mkdir(exist_ok=True)
    report = {}
    with thttp.InferenceServerClient(http_url, network_timeout=120) as http:
        report["http"] = session("http", thttp, http, work, out)
    with tgrpc.InferenceServerClient(grpc_target) as client:
        report["grpc"] = session("grpc", tgrpc, client, work, out)
    report["grpc_typed"] = typed_contents(grpc_target, np.load(work / "pixels.npy")[:1])
    return report


if __name__ == "__main__":
    try:
        print(json.dumps(main(*sys.argv[1:])))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
