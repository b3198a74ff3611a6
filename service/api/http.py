"""HTTP surface (FastAPI): routes, option parsing and JSON encoding; the work is in ``SegmentationCore``."""

from __future__ import annotations

import base64
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service import metrics
from service.api.errors import http_headers, to_service_error
from service.errors import InvalidArgument, InvalidImage, PayloadTooLarge, ServiceError
from service.types import SegmentOptions, SegmentResult

logger = logging.getLogger("ray.serve")

KNOWN_QUERY = frozenset({"format", "overlay"})
TRUE, FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
TIMEOUT_HEADER = "x-request-timeout-ms"


def core_of(request: Request):
    return request.app.state.core


def parse_options(model: str, query: dict[str, str], request_id: str, deadline: float) -> SegmentOptions:
    unknown = set(query) - KNOWN_QUERY
    if unknown:
        raise InvalidArgument(f"unknown query option(s) {sorted(unknown)}; known: format, overlay")
    overlay = query.get("overlay", "false").lower()
    if overlay not in TRUE | FALSE:
        raise InvalidArgument(f"overlay must be true or false, got {query['overlay']!r}")
    return SegmentOptions(
        model=model,
        format=query.get("format", "png"),  # type: ignore[arg-type]
        overlay=overlay in TRUE,
        request_id=request_id,
        deadline=deadline,
        protocol="http",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (Ray Serve sets no body limit)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_from_request(request: Request, limit: int) -> tuple[bytes, str | None]:
    """Raw body, or the multipart field ``image``; returns the bytes and their declared type."""
    content_type = request.headers.get("content-type")
    body = await read_body(request, limit)
    if content_type and content_type.lower().startswith("multipart/form-data"):
        return await _multipart_image(request, body, content_type)
    return body, content_type


async def _multipart_image(request: Request, body: bytes, content_type: str) -> tuple[bytes, str | None]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body

    headers = request.headers
    try:
        form = await MultiPartParser(headers, stream()).parse()
    except (MultiPartException, ValueError, KeyError) as e:
        raise InvalidArgument(f"malformed multipart body: {e}") from None
    field = form.get("image")
    if not isinstance(field, UploadFile):
        raise InvalidImage("multipart body has no file field named 'image'")
    return await field.read(), field.content_type


def result_json(result: SegmentResult) -> dict[str, Any]:
    mask: dict[str, Any] = {"format": result.mask_format}
    if result.mask_png is not None:
        mask.update(
            encoding="base64", media_type="image/png", data=base64.b64encode(result.mask_png).decode()
        )
    if result.mask_raw is not None:
        mask.update(
            encoding="base64",
            dtype=result.mask_dtype,
            shape=[result.height, result.width],
            data=base64.b64encode(result.mask_raw).decode(),
        )
    if result.rle is not None:
        mask["rle"] = result.rle
    if result.polygons is not None:
        mask["polygons"] = result.polygons
    body: dict[str, Any] = {
        "model": result.model,
        "task": result.task,
        "request_id": result.request_id,
        "width": result.width,
        "height": result.height,
        "classes": [{"id": c.id, "name": c.name, "pixels": c.pixels} for c in result.classes],
        "mask": mask,
        "batch_size": result.batch_size,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }
    if result.segments is not None:
        body["segments"] = result.segments
    if result.instances is not None:
        body["instances"] = result.instances
    if result.overlay_png is not None:
        body["overlay"] = {
            "media_type": "image/png",
            "encoding": "base64",
            "data": base64.b64encode(result.overlay_png).decode(),
        }
    return body


def error_response(error: BaseException, request_id: str) -> JSONResponse:
    service_error = to_service_error(error)
    return JSONResponse(
        {"error": {**service_error.to_dict(), "request_id": request_id}},
        status_code=service_error.http_status,
        headers={**http_headers(service_error), "x-request-id": request_id},
    )


def build_http_app() -> FastAPI:
    app = FastAPI(title="segserve", version="1", docs_url="/docs", openapi_url="/openapi.json")

    @app.middleware("http")
    async def request_context(request: Request, call_next):
        from service.api.core import new_request_id

        ray_id = _ray_request_id()
        request_id = new_request_id(request.headers.get("x-request-id") or ray_id)
        request.state.request_id = request_id
        metrics.bind_request_id(request_id)  # every log line and handle call of this request carries it
        with metrics.http_call(request.url.path, core_of(request).segmenters, request_id) as call:
            try:
                if app_path(request) not in OPEN_PATHS:
                    core_of(request).authenticate(_bearer(request.headers.get("authorization")))
                response = await call_next(request)
            except Exception as e:  # every failure becomes a documented status
                error = to_service_error(e)
                request.state.error_code = error.code
                response = error_response(error, request_id)
            if request_id == ray_id and "x-request-id" in response.headers:
                del response.headers["x-request-id"]  # Ray's proxy echoes its id: one header, not two
            elif request_id != ray_id:
                response.headers["x-request-id"] = request_id
            _finish_call(call, request, response)
            return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        request.state.error_code = error.code
        return error_response(error, getattr(request.state, "request_id", ""))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        return await core_of(request).ready()

    @app.get("/v1/models")
    async def list_models(request: Request):
        return {"models": core_of(request).list_models()}

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request):
        return core_of(request).get_model(model)

    @app.post("/v1/models/{model}/segment")
    async def segment(model: str, request: Request):
        core = core_of(request)
        core.spec(model)  # 404 before reading a large body
        deadline = core.deadline(request_timeout(request))
        options = parse_options(model, dict(request.query_params), request.state.request_id, deadline)
        body, content_type = await image_from_request(request, core.settings.limits.max_body_bytes)
        result = await core.segment(body, content_type, options)
        request.state.result = result  # for the metrics and the access log
        headers = {"x-batch-size": str(result.batch_size)}
        if "image/png" in request.headers.get("accept", "") and result.mask_png is not None:
            return Response(result.mask_png, media_type="image/png", headers=headers)
        return JSONResponse(result_json(result), headers=headers)

    return app


def _finish_call(call: metrics.RequestCall, request: Request, response: Response) -> None:
    """Metrics and the access-log line of a segmentation request, from what its handling left."""
    length = response.headers.get("content-length")
    declared = request.headers.get("content-length")
    call.finish(
        status=str(response.status_code),
        http_status=response.status_code,
        code=getattr(request.state, "error_code", None),
        result=getattr(request.state, "result", None),
        response_bytes=int(length) if length and length.isdigit() else None,
        request_bytes=int(declared) if declared and declared.isdigit() else None,
    )


def app_path(request: Request) -> str:
    """The path inside the application: without the route prefix (``/secure/readyz`` -> ``/readyz``)."""
    path, root = request.url.path, request.scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def request_timeout(request: Request) -> float | None:
    """The caller's deadline in seconds from ``x-request-timeout-ms`` (gRPC: ``x-timeout-ms``), capped by
    ``limits.request_timeout_s`` in ``core.deadline``; past it the answer is 504."""
    from service.api.core import parse_timeout_ms

    return parse_timeout_ms(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)


def _ray_request_id() -> str | None:
    """Ray Serve's id for this request (it echoes it as x-request-id), so both agree in the logs."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None
