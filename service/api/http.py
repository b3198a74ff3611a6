"""HTTP surface (FastAPI): routes, option parsing and JSON encoding; the work is in ``SegmentationCore``."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

from service import metrics
from service.api import context as request_context
from service.api.core import parse_timeout_ms
from service.api.errors import http_headers, to_service_error
from service.api.ui import router as page_router
from service.errors import InvalidArgument, InvalidImage, PayloadTooLarge, ServiceError
from service.types import SegmentOptions, SegmentResult

logger = logging.getLogger("ray.serve")

KNOWN_QUERY = frozenset({"format", "overlay"})
TRUE, FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})
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


def error_response(error: BaseException, request_id: str, echoed: bool = False) -> JSONResponse:
    service_error = to_service_error(error)
    headers = http_headers(service_error)
    if not echoed:
        headers["x-request-id"] = request_id
    return JSONResponse(
        {"error": {**service_error.to_dict(), "request_id": request_id}},
        status_code=service_error.http_status,
        headers=headers,
    )


def request_ids(request: Request) -> tuple[str, bool]:
    """The service's id for this request, and whether Ray Serve already echoes it in the response.

    Ray Serve's HTTP middleware puts ``x-request-id`` on every request (the caller's, or a fresh one)
    and echoes it in the response; we use it unless it is not sane (``new_request_id``), and then send
    our own beside it."""
    given = request.headers.get("x-request-id")
    request_id = request_context.new_request_id(given)
    return request_id, request_id == given


def build_http_app() -> FastAPI:
    # The API description needs a key like the API itself, so FastAPI's own open routes are replaced.
    app = FastAPI(title="segserve", version="1", docs_url=None, openapi_url=None)

    @app.exception_handler(Exception)
    async def any_error(request: Request, error: Exception):
        # Routes other than segment (which answers its own errors): every failure is a documented JSON
        # error. Registered for Exception, so Ray Serve's own plain-text handlers never answer.
        request_id, echoed = request_ids(request)
        return error_response(error, request_id, echoed)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError):
        return await any_error(request, error)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request):
        return await core_of(request).ready()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        authenticate(request)
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        authenticate(request)
        return get_swagger_ui_html(openapi_url="openapi.json", title="segserve")

    @app.get("/v1/models")
    async def list_models(request: Request):
        authenticate(request)
        return {"models": core_of(request).list_models()}

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request):
        authenticate(request)
        return core_of(request).get_model(model)

    @app.post("/v1/models/{model}/segment")
    async def segment(model: str, request: Request):
        return await segment_endpoint(core_of(request), model, request)

    # The try-it page (GET /, /ui/): static files, open without a key (why: service/api/ui/__init__.py).
    app.include_router(page_router)
    return app


SEGMENT_PATH = re.compile(r"/v1/models/([^/]+)/segment/?")


class SegmentFirst:
    """The ingress's ASGI app: ``POST /v1/models/{model}/segment`` goes straight to ``segment_endpoint``,
    every other request to the FastAPI app.

    Why: the segment route is the hot path, and FastAPI's middleware stack, routing and parameter
    solving cost about as much CPU per request as decoding the image (profiled under load). The route
    stays declared in the FastAPI app, which documents it in /openapi.json and serves it when the app
    is called on its own; both reach the same ``segment_endpoint``.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    @property
    def state(self):
        return self.app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            root, path = scope.get("root_path", ""), scope["path"]
            inside = path[len(root) :] if root and path.startswith(root) else path
            match = SEGMENT_PATH.fullmatch(inside)
            if match is not None:
                scope["app"] = self.app  # what Starlette's Request.app reads
                request = Request(scope, receive)
                response = await segment_endpoint(self.app.state.core, match.group(1), request)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def authenticate(request: Request) -> None:
    core_of(request).authenticate(_bearer(request.headers.get("authorization")))


async def segment_endpoint(core, model: str, request: Request) -> Response:
    """``POST /v1/models/{model}/segment``: one request, counted, logged and answered, errors included."""
    request_id, echoed = request_ids(request)
    request_context.bind_request_id(request_id)  # every log line (and split handle call) carries it
    with metrics.request_call(
        "http", model, core.served, request_id, on_finish=request_context.access_log
    ) as call:
        try:
            authenticate(request)
            spec = core.spec(model)  # 404 before reading a large body
            deadline = core.deadline(request_timeout(request))
            options = parse_options(model, dict(request.query_params), request_id, deadline)
            body, content_type = await image_from_request(request, core.settings.limits.max_body_bytes)
            result = await core.segment(spec, body, content_type, options)
        except Exception as e:
            error = to_service_error(e)
            call.failed(str(error.http_status), error, request_id)
            return error_response(error, request_id, echoed)
        headers = {"x-batch-size": str(result.batch_size)}
        if not echoed:
            headers["x-request-id"] = request_id
        if "image/png" in request.headers.get("accept", "") and result.mask_png is not None:
            response: Response = Response(result.mask_png, media_type="image/png", headers=headers)
        else:
            response = JSONResponse(result_json(result), headers=headers)
        call.succeeded("200", result, len(response.body), request_id, len(body))
        return response


def request_timeout(request: Request) -> float | None:
    """The caller's deadline in seconds from ``x-request-timeout-ms`` (gRPC: ``x-timeout-ms``), capped by
    ``limits.request_timeout_s`` in ``core.deadline``; past it the answer is 504."""
    return parse_timeout_ms(request.headers.get(TIMEOUT_HEADER), TIMEOUT_HEADER)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None
