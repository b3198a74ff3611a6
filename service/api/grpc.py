"""gRPC surface: protobuf <-> core conversions and the method bodies the Ingress exposes.

Ray Serve's gRPC proxy routes ``/segmentation.v1.Segmentation/<Method>`` to the Ingress method of
that name; each returns a protobuf message. Errors set the status code and details on the context
(one table: ``service.api.errors.GRPC_STATUS``) and return an empty message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc_health.v1 import health_pb2

from service import metrics
from service.api.core import SegmentationCore, new_request_id, parse_timeout_ms
from service.api.errors import grpc_status, to_service_error
from service.errors import InvalidArgument, ServiceError
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.types import SegmentOptions, SegmentResult

FORMAT_FROM_PB = {
    pb.MASK_FORMAT_UNSPECIFIED: "png",
    pb.MASK_FORMAT_PNG: "png",
    pb.MASK_FORMAT_RAW: "raw",
    pb.MASK_FORMAT_RLE: "rle",
    pb.MASK_FORMAT_POLYGONS: "polygons",
    pb.MASK_FORMAT_COCO_PANOPTIC: "coco_panoptic",
}
FORMAT_TO_PB = {v: k for k, v in FORMAT_FROM_PB.items() if k != pb.MASK_FORMAT_UNSPECIFIED}


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


def options_from_pb(
    request: pb.SegmentRequest,
    meta: dict[str, str],
    core: SegmentationCore,
    ray_request_id: str | None = None,
) -> SegmentOptions:
    if not request.model:
        raise InvalidArgument("field 'model' is required")
    if not request.image:
        raise InvalidArgument("field 'image' is required (the encoded image bytes)")
    if request.format not in FORMAT_FROM_PB:
        raise InvalidArgument(f"unknown mask format {request.format}")
    return SegmentOptions(
        model=request.model,
        format=FORMAT_FROM_PB[request.format],  # type: ignore[arg-type]
        overlay=request.overlay,
        request_id=new_request_id(request.request_id or meta.get("x-request-id") or ray_request_id),
        deadline=core.deadline(timeout_from_metadata(meta)),
        protocol="grpc",
    )


def _ray_request_id(context) -> str | None:
    """Ray's own id for this call (also in its trailing metadata), so logs of both agree."""
    try:
        return context.request_id() if context is not None else None
    except Exception:  # older contexts or handle calls without a proxy
        return None


def _rle_pb(rle: dict) -> pb.Rle:
    return pb.Rle(size=list(rle["size"]), counts=rle["counts"])


def result_to_pb(result: SegmentResult, frame_id: str = "") -> pb.SegmentResponse:
    response = pb.SegmentResponse(
        model=result.model,
        task=result.task,
        request_id=result.request_id,
        frame_id=frame_id,
        width=result.width,
        height=result.height,
        classes=[pb.ClassPresence(id=c.id, name=c.name, pixels=c.pixels) for c in result.classes],
        format=FORMAT_TO_PB[result.mask_format],
        mask_png=result.mask_png or b"",
        mask_raw=result.mask_raw or b"",
        mask_dtype=result.mask_dtype,
        overlay_png=result.overlay_png or b"",
        timings_ms=result.timings_ms,
        batch_size=result.batch_size,
    )
    for item in result.rle or []:
        response.rles.append(pb.ClassRle(class_id=item["class_id"], rle=_rle_pb(item["rle"])))
    for item in result.polygons or []:
        response.polygons.append(
            pb.ClassPolygons(
                class_id=item["class_id"], polygons=[pb.Polygon(points=p) for p in item["polygons"]]
            )
        )
    for s in result.segments or []:
        response.segments.append(
            pb.PanopticSegment(
                id=s["id"],
                category_id=s["category_id"],
                isthing=s["isthing"],
                area=s["area"],
                bbox=s["bbox"],
                score=s.get("score", 0.0),
                rle=_rle_pb(s["rle"]) if "rle" in s else None,
            )
        )
    response.instances.extend(_instance_pb(item) for item in result.instances or [])
    return response


def _instance_pb(item: dict) -> pb.Instance:
    return pb.Instance(
        id=item["id"],
        category_id=item["category_id"],
        name=item["name"],
        score=item["score"],
        bbox=item["bbox"],
        area=item["area"],
        rle=_rle_pb(item["rle"]) if "rle" in item else None,
        polygons=[pb.Polygon(points=p) for p in item.get("polygons", [])],
    )


def model_to_pb(info: dict[str, Any]) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=info["name"],
        task=info["task"],
        version=info["version"],
        weights_digest=info["weights_digest"],
        description=info["description"],
        architecture=info["architecture"],
        classes=[pb.ClassInfo(**c) for c in info["classes"]],
        input=pb.InputPolicy(**info["input"]),
        max_batch_size=info["max_batch_size"],
        instance=pb.InstanceSettings(**info["instance"]) if "instance" in info else None,
    )


def fail(context, error: BaseException, request_id: str = "") -> ServiceError:
    service_error = to_service_error(error)
    if context is not None:
        context.set_code(grpc_status(service_error))
        context.set_details(service_error.message)
        if request_id:
            context.set_trailing_metadata([("x-request-id", request_id)])
    return service_error


async def segment(core: SegmentationCore, request: pb.SegmentRequest, context) -> pb.SegmentResponse:
    meta = metadata(context)
    request_id = ""
    with metrics.request_call("grpc", request.model, core.served) as call:
        try:
            core.authenticate(api_key(meta))
            options = options_from_pb(request, meta, core, _ray_request_id(context))
            request_id = options.request_id
            metrics.bind_request_id(request_id)  # every log line and handle call of this request carries it
            result = await core.segment(request.image, request.content_type or None, options)
        except Exception as e:
            error = fail(context, e, request_id)
            call.failed(grpc_status(error).name, error, request_id)
            return pb.SegmentResponse()
        if context is not None:
            context.set_trailing_metadata([("x-request-id", request_id)])
        response = result_to_pb(result, request.frame_id)
        call.succeeded("OK", result, response.ByteSize(), request_id, request.ByteSize())
        return response


async def segment_stream(
    core: SegmentationCore, requests: AsyncIterator[pb.SegmentRequest], context
) -> AsyncIterator[pb.SegmentResponse]:
    """Frames are answered in order; a bad frame gets ``error`` and the stream continues."""
    meta = metadata(context)
    try:
        core.authenticate(api_key(meta))
    except Exception as e:
        # Raised, not returned: Ray's proxy copies the status onto a stream only with a yielded
        # message or an exception (2.54+ keeps the code set before the raise).
        raise fail(context, e) from None
    async for request in requests:
        with metrics.request_call("grpc", request.model, core.served) as call:  # one per frame
            try:
                options = options_from_pb(request, meta, core)
                metrics.bind_request_id(options.request_id)
                result = await core.segment(request.image, request.content_type or None, options)
                response = result_to_pb(result, request.frame_id)
                call.succeeded("OK", result, response.ByteSize(), options.request_id, request.ByteSize())
            except Exception as e:
                error = to_service_error(e)
                call.failed(grpc_status(error).name, error)
                response = pb.SegmentResponse(
                    model=request.model,
                    frame_id=request.frame_id,
                    error=pb.FrameError(code=error.code, message=error.message),
                )
        yield response


def list_models(core: SegmentationCore, context) -> pb.ListModelsResponse:
    try:
        core.authenticate(api_key(metadata(context)))
        return pb.ListModelsResponse(models=[model_to_pb(m) for m in core.list_models()])
    except Exception as e:
        fail(context, e)
        return pb.ListModelsResponse()


def get_model(core: SegmentationCore, request: pb.GetModelRequest, context) -> pb.ModelInfo:
    try:
        core.authenticate(api_key(metadata(context)))
        return model_to_pb(core.get_model(request.name))
    except Exception as e:
        fail(context, e)
        return pb.ModelInfo()


def health_check(ready: bool) -> health_pb2.HealthCheckResponse:
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse(status=status)
