"""Protobuf <-> the service's types for the gRPC surface: small pure functions, no I/O."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2

from service.errors import InvalidArgument
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.types import MASK_FORMATS, SegmentResult

# The wire enum names the formats of service.types.MASK_FORMATS: MASK_FORMAT_<NAME>.
FORMAT_TO_PB: dict[str, int] = {f: pb.MaskFormat.Value(f"MASK_FORMAT_{f.upper()}") for f in MASK_FORMATS}
FORMAT_FROM_PB: dict[int, str] = {v: k for k, v in FORMAT_TO_PB.items()} | {pb.MASK_FORMAT_UNSPECIFIED: "png"}


def mask_format(value: int) -> str:
    if value not in FORMAT_FROM_PB:
        raise InvalidArgument(f"unknown mask format {value}")
    return FORMAT_FROM_PB[value]


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


def health_check(ready: bool) -> health_pb2.HealthCheckResponse:
    status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse(status=status)
