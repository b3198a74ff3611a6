"""gRPC surface: every method of the Ingress goes through one wrapper, as every HTTP request goes
through the HTTP app's handlers.

Ray Serve routes ``/<package>.<Service>/<Method>`` to the Ingress method of that name, which calls
``unary`` or ``stream`` here with the method's entry in ``METHODS`` (or in another service's table:
the Open Inference Protocol's ``service.api.oip.grpc.METHODS``). The wrapper authenticates (unless the
method is open), counts segmentation requests (``accounted``), sets the request id and maps every
failure to a status code and details through one table (``service.api.errors.GRPC_STATUS``),
returning the method's empty message. Conversions live in ``grpc_convert.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from grpc_health.v1 import health_pb2

from service import metrics
from service.api import context as request_context
from service.api.core import SegmentationCore, parse_timeout_ms
from service.api.errors import grpc_status, to_service_error
from service.api.grpc_convert import health_check, mask_format, model_to_pb, result_to_pb
from service.errors import InvalidArgument, ServiceError
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.types import SegmentOptions


def metadata(context) -> dict[str, str]:
    if context is None:
        return {}
    return {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}


def api_key(meta: dict[str, str]) -> str | None:
    """The key from ``authorization: Bearer <key>`` metadata (the same header as over HTTP)."""
    value = meta.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def timeout_from_metadata(meta: dict[str, str]) -> float | None:
    """Our clients send their deadline as ``x-timeout-ms``: Ray's proxy does not forward grpc-timeout."""
    return parse_timeout_ms(meta.get("x-timeout-ms"), "x-timeout-ms")


@dataclass
class Call:
    """One RPC (or one frame of a stream): what the wrapper knows about it, for its method body."""

    core: SegmentationCore
    context: Any
    meta: dict[str, str]
    request_id: str = ""
    result: Any = None  # the SegmentResult of an accounted call, for the access log
    request_bytes: int | None = None
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def options(self, request: pb.SegmentRequest) -> SegmentOptions:
        if not request.model:
            raise InvalidArgument("field 'model' is required")
        if not request.image:
            raise InvalidArgument("field 'image' is required (the encoded image bytes)")
        return SegmentOptions(
            model=request.model,
            format=mask_format(request.format),  # type: ignore[arg-type]
            overlay=request.overlay,
            request_id=self.request_id,
            deadline=self.core.deadline(timeout_from_metadata(self.meta)),
            protocol="grpc",
        )


Body = Callable[[Any, Call], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    body: Body
    empty: Callable[[], Any]
    """The message answered with an error status."""
    open: bool = False
    """No API key needed (health checks)."""
    accounted: bool = False
    """Counted, timed and logged as a segmentation request for the request's ``model``."""
    protocol: str = "grpc"
    """The ``protocol`` label an accounted call is counted and logged under."""
    model_field: str = "model"
    """The request's field that names the model (accounted calls)."""
    id_field: str = "request_id"
    """The request's field with the caller's request id, if it has one."""


# --- the method bodies ----------------------------------------------------------------------------


async def _segment(request: pb.SegmentRequest, call: Call, frame_id: str = "") -> pb.SegmentResponse:
    options = call.options(request)
    call.result = await call.core.segment(
        call.core.spec(options.model), request.image, request.content_type or None, options
    )
    return result_to_pb(call.result, frame_id or request.frame_id)


async def _list_models(request: Any, call: Call) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_to_pb(m) for m in call.core.list_models()])


async def _get_model(request: pb.GetModelRequest, call: Call) -> pb.ModelInfo:
    return model_to_pb(call.core.get_model(request.name))


async def _check(request: Any, call: Call) -> health_pb2.HealthCheckResponse:
    """grpc.health.v1.Health/Check, for Kubernetes gRPC probes: SERVING once every model is ready."""
    try:
        await call.core.ready()
    except Exception:
        return health_check(ready=False)
    return health_check(ready=True)


METHODS: dict[str, Method] = {
    "Segment": Method(_segment, pb.SegmentResponse, accounted=True),
    "ListModels": Method(_list_models, pb.ListModelsResponse),
    "GetModel": Method(_get_model, pb.ModelInfo),
    "Check": Method(_check, health_pb2.HealthCheckResponse, open=True),
}


# --- the wrapper ----------------------------------------------------------------------------------


def _start(
    core: SegmentationCore,
    request: Any,
    context,
    meta: dict[str, str],
    frame: bool = False,
    id_field: str = "request_id",
) -> Call:
    """The call's request id: the request's own field, else ``x-request-id`` metadata, else Ray's id for
    the RPC (a stream's frames get fresh ones instead: Ray's id names the whole stream)."""
    given = getattr(request, id_field, "") or meta.get("x-request-id")
    ray_id = None if frame else request_context.grpc_ray_request_id(context)
    request_id = request_context.new_request_id(given or ray_id)
    request_context.bind_request_id(request_id)  # every log line (and split handle call) carries it
    return Call(core, context, meta, request_id, request_bytes=request.ByteSize())


def _accounting(call: Call, method: Method, request: Any):
    if not method.accounted:
        return contextlib.nullcontext()
    model = getattr(request, method.model_field)
    return metrics.request_call(
        method.protocol, model, call.core.served, call.request_id, on_finish=request_context.access_log
    )


def fail(context, error: BaseException, request_id: str = "") -> ServiceError:
    service_error = to_service_error(error)
    if context is not None:
        context.set_code(grpc_status(service_error))
        context.set_details(service_error.message)
        if request_id:
            context.set_trailing_metadata([("x-request-id", request_id)])
    return service_error


async def unary(
    core: SegmentationCore, name: str, request: Any, context, methods: Mapping[str, Method] = METHODS
) -> Any:
    """Run method ``name`` of ``methods`` for one request: auth, accounting, errors, request id."""
    method = methods[name]
    meta = metadata(context)
    call = _start(core, request, context, meta, id_field=method.id_field)
    with _accounting(call, method, request) as account:
        try:
            if not method.open:
                core.authenticate(api_key(meta))
            response = await method.body(request, call)
        except Exception as e:
            error = fail(context, e, call.request_id)
            if account is not None:
                account.failed(grpc_status(error).name, error, call.request_id)
            return method.empty()
        if context is not None:
            context.set_trailing_metadata([("x-request-id", call.request_id)])
        if account is not None:
            account.succeeded("OK", call.result, response.ByteSize(), call.request_id, call.request_bytes)
        return response


async def segment_stream(
    core: SegmentationCore, requests: AsyncIterator[pb.SegmentRequest], context
) -> AsyncIterator[pb.SegmentResponse]:
    """``SegmentStream``: authenticated once; each frame is accounted like a ``Segment`` call and answered
    in order; a bad frame gets ``error`` and the stream goes on."""
    meta = metadata(context)
    try:
        core.authenticate(api_key(meta))
    except Exception as e:
        # Raised, not returned: Ray's proxy copies the status onto a stream only with a yielded
        # message or an exception (2.54+ keeps the code set before the raise).
        raise fail(context, e) from None
    method = METHODS["Segment"]
    async for request in requests:
        call = _start(core, request, context, meta, frame=True)
        with _accounting(call, method, request) as account:
            try:
                response = await _segment(request, call)
            except Exception as e:
                error = to_service_error(e)
                account.failed(grpc_status(error).name, error, call.request_id)
                response = pb.SegmentResponse(
                    model=request.model,
                    frame_id=request.frame_id,
                    error=pb.FrameError(code=error.code, message=error.message),
                )
            else:
                account.succeeded("OK", call.result, response.ByteSize(), call.request_id, call.request_bytes)
        yield response
