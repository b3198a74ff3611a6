"""gRPC client for ``segmentation.v1.Segmentation``: unary ``Segment``, bidirectional ``SegmentStream``,
``ListModels``, ``GetModel``, and ``grpc.health.v1.Health/Check`` for ``ready()``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from segserve_client import health
from segserve_client._generated.segmentation.v1 import segmentation_pb2 as pb
from segserve_client._generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve_client.decode import decode_labels
from segserve_client.errors import ClientError
from segserve_client.images import ImageInput, image_bytes
from segserve_client.retry import RetryPolicy, call_with_retries
from segserve_client.types import ClassCount, SegmentationResult

# gRPC's default limit for a received message is 4 MiB. A 20-megapixel image (a 10-30 MB JPEG or
# PNG) is larger than that on the way in, and its mask (20 MB raw, several MB as PNG) and overlay
# (up to 60 MB of RGB PNG) on the way out: without these options the call fails with
# RESOURCE_EXHAUSTED "Received message larger than max (N vs. 4194304)". The service side already
# allows 2 GiB - 1 (Ray's RAY_SERVE_GRPC_MAX_MESSAGE_SIZE default); 256 MiB covers 20 MP with room
# while still bounding what one answer can make this process allocate.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# The proto's enum spells the formats: MASK_FORMAT_<NAME> is format "<name>".
FORMAT_TO_PB: dict[str, int] = {
    name.removeprefix("MASK_FORMAT_").lower(): value
    for name, value in pb.MaskFormat.items()
    if value != pb.MASK_FORMAT_UNSPECIFIED
}
FORMAT_FROM_PB = {v: k for k, v in FORMAT_TO_PB.items()} | {pb.MASK_FORMAT_UNSPECIFIED: "png"}

# The service's error codes and the gRPC status each maps to (service/api/errors.py GRPC_STATUS; a
# unit test keeps the two equal). Used for per-frame stream errors, which carry only the code.
SERVICE_CODE_TO_GRPC: dict[str, str] = {
    "invalid_image": "INVALID_ARGUMENT",
    "invalid_argument": "INVALID_ARGUMENT",
    "unsupported_media_type": "INVALID_ARGUMENT",
    "payload_too_large": "INVALID_ARGUMENT",
    "model_not_found": "NOT_FOUND",
    "unauthenticated": "UNAUTHENTICATED",
    "overloaded": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "deadline_exceeded": "DEADLINE_EXCEEDED",
    "internal": "INTERNAL",
}


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """The options every channel to the service needs (large images and masks)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class GrpcClient:
    """``GrpcClient("127.0.0.1:9000").segment("cat.jpg", model="unet-shapes")``.

    ``timeout_s`` bounds each unary call, retries included, and is each stream frame's deadline.
    UNAVAILABLE and RESOURCE_EXHAUSTED are retried ``retries`` times with exponential backoff and
    jitter, except a "message larger than max" RESOURCE_EXHAUSTED, which is a local size limit that
    a retry cannot fix. ``application`` names the Ray Serve application when several are deployed.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        api_key: str | None = None,
        timeout_s: float = 30,
        retries: int = 3,
        backoff_s: float = 0.2,
        *,
        secure: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        application: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.policy = retry_policy or RetryPolicy(retries=retries, backoff_s=backoff_s)
        self._base_metadata: list[tuple[str, str]] = []
        if api_key:
            self._base_metadata.append(("authorization", f"Bearer {api_key}"))
        if application:
            self._base_metadata.append(("application", application))
        options = channel_options(max_message_bytes)
        if secure or credentials is not None:
            creds = credentials or grpc.ssl_channel_credentials()
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.SegmentationStub(self._channel)

    # --- calls -------------------------------------------------------------------------------------

    def segment(
        self,
        image: ImageInput,
        model: str,
        format: str = "png",
        overlay: bool = False,
        request_id: str | None = None,
    ) -> SegmentationResult:
        data, content_type = image_bytes(image)
        request_id = request_id or uuid.uuid4().hex
        request = pb.SegmentRequest(
            model=model,
            image=data,
            content_type=content_type,
            format=format_to_pb(format),
            overlay=overlay,
            request_id=request_id,
        )
        return result_from_pb(self._unary(self._stub.Segment, request, request_id))

    def stream(
        self,
        frames: Iterable[tuple[str, ImageInput]],
        model: str,
        format: str = "png",
        overlay: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[SegmentationResult]:
        """Stream ``(frame_id, image)`` pairs; yields one result per frame, in order, ids preserved.

        A frame the service could not segment comes back as a result with ``.error`` set (a
        ``ClientError``) and the stream goes on. A failure of the stream itself raises
        ``ClientError``; streams are not retried (the frames are consumed as they are sent).
        ``timeout_s`` bounds the whole stream (default: none); each frame gets the client's
        ``timeout_s`` as its own deadline. Frames are read lazily, while earlier ones are in flight.
        """
        stream_id = request_id or uuid.uuid4().hex
        pb_format = format_to_pb(format)
        failures: list[BaseException] = []

        def requests() -> Iterator[pb.SegmentRequest]:
            try:
                for frame_id, image in frames:
                    data, content_type = image_bytes(image)
                    yield pb.SegmentRequest(
                        model=model,
                        image=data,
                        content_type=content_type,
                        format=pb_format,
                        overlay=overlay,
                        frame_id=str(frame_id),
                        request_id=f"{stream_id}/{frame_id}"[:128],
                    )
            except Exception as e:  # grpc would only say "Exception iterating requests!"
                failures.append(e)
                raise

        call = self._stub.SegmentStream(
            requests(), timeout=timeout_s, metadata=self._metadata(stream_id, self.timeout_s)
        )
        try:
            for response in call:
                yield result_from_pb(response)
        except grpc.RpcError as e:
            if failures:
                raise failures[0] from None
            raise error_from_rpc(e, stream_id) from None
        finally:
            call.cancel()  # a no-op once finished; stops the stream when the caller stops early

    def list_models(self) -> list[dict]:
        response = self._unary(self._stub.ListModels, pb.ListModelsRequest(), uuid.uuid4().hex)
        return [model_to_dict(m) for m in response.models]

    def get_model(self, name: str) -> dict:
        request = pb.GetModelRequest(name=name)
        return model_to_dict(self._unary(self._stub.GetModel, request, uuid.uuid4().hex))

    def ready(self) -> bool:
        """``grpc.health.v1.Health/Check`` says SERVING (every model loaded and warmed). No retries."""
        try:
            timeout_s = min(self.timeout_s, 10)
            status = health.check(self._channel, timeout_s=timeout_s, metadata=self._base_metadata)
        except grpc.RpcError:
            return False
        return status == health.SERVING

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------

    def _metadata(self, request_id: str, timeout_s: float | None) -> list[tuple[str, str]]:
        metadata = [*self._base_metadata, ("x-request-id", request_id)]
        if timeout_s is not None:
            # Ray's gRPC proxy does not pass grpc-timeout on to the replica; the service reads this.
            metadata.append(("x-timeout-ms", str(max(int(timeout_s * 1000), 1))))
        return metadata

    def _unary(self, method: Any, request: Any, request_id: str) -> Any:
        def attempt(remaining_s: float | None) -> Any:
            try:
                return method(request, timeout=remaining_s, metadata=self._metadata(request_id, remaining_s))
            except grpc.RpcError as e:
                raise error_from_rpc(e, request_id) from None

        return call_with_retries(attempt, self.policy, self.timeout_s)


def format_to_pb(name: str) -> int:
    if name not in FORMAT_TO_PB:
        raise ValueError(f"unknown format {name!r}; use one of {', '.join(FORMAT_TO_PB)}")
    return FORMAT_TO_PB[name]


def error_from_rpc(error: grpc.RpcError, request_id: str) -> ClientError:
    """A failed call -> ``ClientError(status=<code name>, code=<code name, lower case>, details)``."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    trailing = dict(error.trailing_metadata() or ()) if hasattr(error, "trailing_metadata") else {}
    # "Sent/Received message larger than max": this client's size limit, not the server's load.
    retryable = code in RETRY_CODES and "larger than max" not in details
    request_id = trailing.get("x-request-id") or trailing.get("request_id") or request_id
    return ClientError(code.name, code.name.lower(), details, request_id, retryable=retryable)


def _rle(rle: pb.Rle) -> dict:
    return {"size": list(rle.size), "counts": rle.counts}


def _segment(s: pb.PanopticSegment) -> dict:
    out = {
        "id": s.id,
        "category_id": s.category_id,
        "isthing": s.isthing,
        "area": s.area,
        "bbox": [float(v) for v in s.bbox],
        "score": s.score,
    }
    if s.HasField("rle"):
        out["rle"] = _rle(s.rle)
    return out


def result_from_pb(response: pb.SegmentResponse) -> SegmentationResult:
    """A ``SegmentResponse`` -> ``SegmentationResult`` (or a failed one when ``error`` is set)."""
    if response.HasField("error"):
        code = response.error.code
        error = ClientError(
            SERVICE_CODE_TO_GRPC.get(code, "UNKNOWN"),
            code,
            response.error.message,
            response.request_id or None,
        )
        return SegmentationResult.failed(response.model, response.frame_id, error)
    fmt = FORMAT_FROM_PB.get(response.format, "png")
    segments = [_segment(s) for s in response.segments]
    rles = [{"class_id": r.class_id, "rle": _rle(r.rle)} for r in response.rles] if fmt == "rle" else None
    polygons = None
    if fmt == "polygons":
        polygons = [
            {"class_id": p.class_id, "polygons": [list(g.points) for g in p.polygons]}
            for p in response.polygons
        ]
    labels, panoptic = decode_labels(
        fmt,
        response.height,
        response.width,
        segments,
        png=response.mask_png or None,
        raw=response.mask_raw or None,
        dtype=response.mask_dtype or "uint8",
        rles=rles,
    )
    return SegmentationResult(
        model=response.model,
        task=response.task,
        width=response.width,
        height=response.height,
        labels=labels,
        classes=[ClassCount(c.id, c.name, c.pixels) for c in response.classes],
        panoptic=panoptic,
        segments=segments,
        instances=[_instance(i) for i in response.instances],
        overlay_png=response.overlay_png or None,
        timings_ms=dict(response.timings_ms),
        batch_size=response.batch_size,
        request_id=response.request_id,
        format=fmt,
        mask_png=response.mask_png or None,
        rle=rles,
        polygons=polygons,
        frame_id=response.frame_id,
    )


def _instance(item: pb.Instance) -> dict:
    """An ``Instance`` -> the dict the JSON answer has (``rle`` / ``polygons`` only when sent)."""
    out = {
        "id": item.id,
        "category_id": item.category_id,
        "name": item.name,
        "score": item.score,
        "bbox": list(item.bbox),
        "area": item.area,
    }
    if item.HasField("rle"):
        out["rle"] = _rle(item.rle)
    if item.polygons:
        out["polygons"] = [list(p.points) for p in item.polygons]
    return out


def _f32(values: Iterable[float]) -> list[float]:
    return [float(f"{v:.7g}") for v in values]  # proto floats are float32: 0.485 -> 0.48500001430511475


def model_to_dict(info: pb.ModelInfo) -> dict:
    """``ModelInfo`` -> the same dict ``GET /v1/models/{model}`` returns."""
    out: dict = {
        "name": info.name,
        "task": info.task,
        "version": info.version,
        "weights_digest": info.weights_digest,
        "description": info.description,
        "architecture": info.architecture,
        "classes": [
            {"id": c.id, "name": c.name, "color": list(c.color), "isthing": c.isthing} for c in info.classes
        ],
        "input": {
            "mode": info.input.mode,
            "size": info.input.size,
            "size_divisor": info.input.size_divisor,
            "mean": _f32(info.input.mean),
            "std": _f32(info.input.std),
        },
        "max_batch_size": info.max_batch_size,
    }
    if info.input.max_size:
        out["input"]["max_size"] = info.input.max_size
    if info.HasField("instance"):
        settings = info.instance
        out["instance"] = {
            "score_threshold": _f32([settings.score_threshold])[0],
            "nms_threshold": _f32([settings.nms_threshold])[0],
            "max_detections": settings.max_detections,
            "mask_threshold": _f32([settings.mask_threshold])[0],
        }
    return out
