"""Open Inference Protocol over HTTP/REST: the ``/v2`` routes, beside ``/v1`` on the same app and port.

JSON tensors and Triton's binary tensor data extension (``Inference-Header-Content-Length``: the JSON
header, then each input's bytes in order; an input says ``binary_data_size``, an output is asked for
with ``binary_data: true`` or the request's ``binary_data_output: true``). Errors are the protocol's
``{"error": "<message>"}`` with the status of the service's error (400, 401, 404, 413, 415, 503, 504).
Auth, request ids, deadlines (``x-request-timeout-ms`` or the ``timeout`` parameter in microseconds)
and accounting (protocol ``oip_http``) are those of ``/v1``.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import metrics
from service.api import context as request_context
from service.api.errors import http_headers, to_service_error
from service.api.http import authenticate, core_of, read_body, request_ids, request_timeout
from service.api.oip import infer as oip_infer
from service.api.oip import model as oip_model
from service.api.oip import tensors
from service.api.oip.infer import InferAnswer, InferRequest, InputTensor, RequestedOutput
from service.errors import InvalidArgument, PayloadTooLarge, Unavailable, UnsupportedMediaType

HEADER_LENGTH = "inference-header-content-length"
router = APIRouter()


def _routes(path: str, methods: list[str]):
    """Register a route with and without ``/versions/{version}`` after the model's name."""

    def register(handler):
        router.add_api_route(f"/v2/models/{{model}}{path}", handler, methods=methods, include_in_schema=True)
        router.add_api_route(f"/v2/models/{{model}}/versions/{{version}}{path}", handler, methods=methods)
        return handler

    return register


def oip_error(error: BaseException, request_id: str, echoed: bool) -> JSONResponse:
    service_error = to_service_error(error)
    headers = http_headers(service_error)
    if not echoed:
        headers["x-request-id"] = request_id
    return JSONResponse(
        {"error": service_error.message}, status_code=service_error.http_status, headers=headers
    )


async def _answer(request: Request, work) -> Response:
    """Run ``work()`` (a metadata route) and answer its JSON, or the protocol's error object."""
    request_id, echoed = request_ids(request)
    try:
        return JSONResponse(await work())
    except Exception as e:
        return oip_error(e, request_id, echoed)


# --- health, metadata ------------------------------------------------------------------------------------


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    """200 once every model is ready; else 400 (the protocol: a 4xx status says false)."""
    try:
        await core_of(request).ready()
    except Exception:
        return JSONResponse({"ready": False}, status_code=400)
    return JSONResponse({"ready": True})


@router.get("/v2")
async def server_metadata(request: Request) -> Response:
    async def work():
        authenticate(request)
        return oip_model.server_metadata()

    return await _answer(request, work)


@_routes("/ready", ["GET"])
async def model_ready(model: str, request: Request, version: str | None = None) -> Response:
    """200 when the model answers from a loaded replica; 400 when not ready, 404 when not served."""

    async def work():
        authenticate(request)
        core = core_of(request)
        oip_model.check_version(core.spec(model), version)
        try:
            answers = (await core.ready())["models"]
        except Unavailable:
            answers = []
        if not any(a.get("model") == model for a in answers):
            raise InvalidArgument(f"model {model!r} is not ready")
        return {"name": model, "ready": True}

    return await _answer(request, work)


@_routes("", ["GET"])
async def model_metadata(model: str, request: Request, version: str | None = None) -> Response:
    async def work():
        authenticate(request)
        core = core_of(request)
        spec = oip_model.check_version(core.spec(model), version)
        return oip_model.model_metadata(spec, core.get_model(model))

    return await _answer(request, work)


@_routes("/config", ["GET"])
async def model_config(model: str, request: Request, version: str | None = None) -> Response:
    async def work():
        authenticate(request)
        core = core_of(request)
        spec = oip_model.check_version(core.spec(model), version)
        return oip_model.model_config(spec, core.get_model(model))

    return await _answer(request, work)


# --- inference -------------------------------------------------------------------------------------------


@_routes("/infer", ["POST"])
async def infer(model: str, request: Request, version: str | None = None) -> Response:
    """One inference: counted, logged and answered like ``/v1`` segment requests, errors included."""
    core = core_of(request)
    request_id, echoed = request_ids(request)
    request_context.bind_request_id(request_id)
    with metrics.request_call(
        "oip_http", model, core.served, request_id, on_finish=request_context.access_log
    ) as call:
        try:
            authenticate(request)
            spec = oip_model.check_version(core.spec(model), version)  # 404 before reading the body
            limit = core.settings.limits.max_body_bytes
            body = _decompress(
                await read_body(request, limit), request.headers.get("content-encoding"), limit
            )
            parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
            deadline = core.deadline(_shorter(request_timeout(request), parsed.timeout_s()))
            answer = await oip_infer.infer(core, spec, parsed, request_id, deadline, "oip_http")
        except Exception as e:
            error = to_service_error(e)
            call.failed(str(error.http_status), error, request_id)
            return oip_error(error, request_id, echoed)
        response = encode_response(spec.name, spec.version, parsed, answer)
        if not echoed:
            response.headers["x-request-id"] = request_id
        call.succeeded("200", answer.results[0], len(response.body), request_id, len(body))
        return response


def _shorter(a: float | None, b: float | None) -> float | None:
    given = [t for t in (a, b) if t is not None]
    return min(given) if given else None


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A gzip or deflate body (tritonclient's request compression), inflated to at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"content-encoding {encoding!r} is not supported; use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"the {encoding} body does not inflate: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the inflated body is over the limit of {limit} bytes")
    return out


# --- the wire form ---------------------------------------------------------------------------------------


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The JSON header (the whole body, or its first ``Inference-Header-Content-Length`` bytes) and the
    binary data after it, in the order of the inputs that declare ``binary_data_size``."""
    size = _header_size(header_length, len(body))
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument(f"the inference request is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidArgument("the inference request must be a JSON object with an 'inputs' array")
    binary, at = memoryview(body)[size:], 0
    inputs = []
    for item in header["inputs"]:
        tensor, used = _input(item, binary[at:])
        inputs.append(tensor)
        at += used
    if at != len(binary):
        raise InvalidArgument(f"{len(binary) - at} bytes of binary data are not claimed by any input")
    return InferRequest(
        id=str(header.get("id", "")),
        parameters=_parameters(header.get("parameters")),
        inputs=inputs,
        outputs=[_requested(o) for o in header.get("outputs") or []],
    )


def _header_size(value: str | None, body_size: int) -> int:
    if value is None:
        return body_size
    if not value.strip().isdigit() or int(value) > body_size:
        raise InvalidArgument(
            f"{HEADER_LENGTH} must be a byte count within the body's {body_size}, got {value!r}"
        )
    return int(value)


def _parameters(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("'parameters' must be a JSON object")
    return value


def _input(item: Any, binary: memoryview) -> tuple[InputTensor, int]:
    """One input from its JSON and, with ``binary_data_size``, the binary data that follows."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("each input must be an object with a 'name'")
    name = item["name"]
    datatype = tensors.check_datatype(name, item.get("datatype"))
    shape = tensors.check_shape(name, item.get("shape"))
    params = _parameters(item.get("parameters"))
    size = params.get("binary_data_size")
    if size is None:
        base64_strings = params.get("content_type") == "base64"
        return InputTensor(
            name, datatype, shape, tensors.from_json(name, item.get("data"), datatype, shape, base64_strings)
        ), 0
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
        raise InvalidArgument(f"input {name!r}: binary_data_size {size!r} does not fit the binary data")
    return InputTensor(
        name, datatype, shape, tensors.from_raw(name, bytes(binary[:size]), datatype, shape)
    ), size


def _requested(item: Any) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidArgument("each requested output must be an object with a 'name'")
    return RequestedOutput(item["name"], _parameters(item.get("parameters")))


def encode_response(model: str, version: str, request: InferRequest, answer: InferAnswer) -> Response:
    """JSON outputs, or (when any is binary) the JSON header and the binary outputs after it."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    header_outputs, chunks = [], []
    for output, asked in zip(answer.outputs, answer.requested, strict=True):
        described: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if bool(asked.parameters.get("binary_data", default_binary)):
            raw = tensors.to_raw(output.values, output.datatype)
            described["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            described["data"] = tensors.to_json(output.values, output.datatype)
        header_outputs.append(described)
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": header_outputs}
    if request.id:
        header["id"] = request.id
    text = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        b"".join([text, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )
