"""The soak's load: a weighted mix of request kinds over HTTP and gRPC, closed loop, each answer checked
against the statuses documented for its kind.

Kinds: every served model in every output format it has, with and without overlays, JSON and PNG and
multipart over HTTP, unary calls and streams (one bad frame inside) over gRPC, model listings; bad
inputs (not an image, an unknown model or format, a pixel bomb); and requests the client gives up on
half-way: an HTTP connection closed mid-upload or while the server works, a gRPC call cancelled, a
gRPC stream cancelled after its first answer.

An outcome is ``HTTP <status>[ <error code>]``, ``gRPC <status code>``, ``cancelled`` (the client gave
up before an answer) or a failure reason. Each kind lists the outcomes the docs promise for it; the
service's busy answers (503 ``overloaded`` / ``RESOURCE_EXHAUSTED``, 504 / ``DEADLINE_EXCEEDED``) are
documented for every segment request too, and counted apart.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import httpx
from PIL import Image

from loadtests.client import channel_options, pb, pb_grpc
from loadtests.images import TestImage, make_images

FORMATS = {
    "semantic": ("png", "raw", "rle", "polygons"),
    "panoptic": ("png", "raw", "rle", "polygons", "coco_panoptic"),
    "instance": ("png", "raw", "rle", "polygons"),
}
GRPC_FORMAT = {
    "png": pb.MASK_FORMAT_PNG,
    "raw": pb.MASK_FORMAT_RAW,
    "rle": pb.MASK_FORMAT_RLE,
    "polygons": pb.MASK_FORMAT_POLYGONS,
    "coco_panoptic": pb.MASK_FORMAT_COCO_PANOPTIC,
}
BUSY = frozenset({"HTTP 503 overloaded", "HTTP 504 deadline_exceeded", "gRPC RESOURCE_EXHAUSTED",
                  "gRPC DEADLINE_EXCEEDED"})  # fmt: skip
SIZES = ((128, 128), (256, 256), (320, 240), (640, 480))
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    expected: frozenset[str]
    """The documented outcomes of this kind (besides ``BUSY`` for segment requests)."""
    run: Callable[[Load, random.Random], Awaitable[str]]
    segment: bool = True


class Load:
    """Clients and inputs shared by the workers; ``counts`` of (kind, outcome)."""

    def __init__(self, url: str, grpc_target: str, models: dict[str, str], timeout_s: float = 60.0) -> None:
        self.url = url
        self.models = models  # name -> task
        self.timeout_s = timeout_s
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits)
        self.channel = grpc.aio.insecure_channel(grpc_target, options=channel_options())
        self.stub = pb_grpc.SegmentationStub(self.channel)
        self.metadata = (("x-timeout-ms", str(int(timeout_s * 1000))),)
        self.images = [img for k, size in enumerate(SIZES) for img in make_images(size, seed=k, synthetic=2)]
        self.bomb = _pixel_bomb()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.forced: tuple[str, str] | None = None  # (model, format) during the coverage pass

    def pick(self, rng: random.Random) -> tuple[str, str, TestImage]:
        if self.forced:
            return *self.forced, rng.choice(self.images)
        model = rng.choice(sorted(self.models))
        return model, rng.choice(FORMATS[self.models[model]]), rng.choice(self.images)

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.channel.close()


def _pixel_bomb() -> bytes:
    """A 1-bit PNG of 8000 x 6000: a few kB that declare 48 megapixels (over the 40 MP limit)."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- HTTP -----------------------------------------------------------------------------------------------


def http_outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "HTTP 200"
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "(not our error body)"
    return f"HTTP {response.status_code} {code}"


def check_json(answer: dict, model: str, fmt: str, overlay: bool, image: TestImage) -> str | None:
    """None when the JSON answer is what was asked for, else what is wrong."""
    if answer.get("model") != model or (answer.get("width"), answer.get("height")) != (
        image.width,
        image.height,
    ):
        return "answer for another model or size"
    mask = answer.get("mask", {})
    if mask.get("format") != fmt:
        return f"mask format {mask.get('format')!r}"
    field = {"rle": "rle", "polygons": "polygons"}.get(fmt, "data")
    if field not in mask:
        return f"no mask {field}"
    if fmt == "raw" and len(base64.b64decode(mask["data"])) < image.width * image.height:
        return "raw mask too short"
    if overlay and "overlay" not in answer:
        return "no overlay"
    return None


async def http_segment(load: Load, rng: random.Random) -> str:
    model, fmt, image = load.pick(rng)
    overlay = rng.random() < 0.3
    response = await load.http.post(
        f"/v1/models/{model}/segment",
        params={"format": fmt, "overlay": str(overlay).lower()},
        content=image.data,
        headers={"content-type": image.content_type, "accept": "application/json"},
    )
    outcome = http_outcome(response)
    if outcome == "HTTP 200":
        wrong = check_json(json.loads(response.content), model, fmt, overlay, image)
        return f"HTTP 200 wrong answer: {wrong}" if wrong else outcome
    return outcome


async def http_png_body(load: Load, rng: random.Random) -> str:
    model, _, image = load.pick(rng)
    response = await load.http.post(
        f"/v1/models/{model}/segment", content=image.data, headers={"accept": "image/png"}
    )
    outcome = http_outcome(response)
    if outcome == "HTTP 200" and not response.content.startswith(b"\x89PNG"):
        return "HTTP 200 wrong answer: body is not a PNG"
    return outcome


async def http_multipart(load: Load, rng: random.Random) -> str:
    model, _, image = load.pick(rng)
    files = {"image": (image.name, image.data, image.content_type)}
    response = await load.http.post(f"/v1/models/{model}/segment", files=files)
    return http_outcome(response)


async def http_bad_image(load: Load, rng: random.Random) -> str:
    model = rng.choice(sorted(load.models))
    body = rng.randbytes(rng.randrange(16, 4096))
    return http_outcome(await load.http.post(f"/v1/models/{model}/segment", content=body))


async def http_unknown_model(load: Load, rng: random.Random) -> str:
    _, _, image = load.pick(rng)
    return http_outcome(await load.http.post("/v1/models/no-such-model/segment", content=image.data))


async def http_bad_format(load: Load, rng: random.Random) -> str:
    model, _, image = load.pick(rng)
    response = await load.http.post(f"/v1/models/{model}/segment?format=jpeg", content=image.data)
    return http_outcome(response)


async def http_pixel_bomb(load: Load, rng: random.Random) -> str:
    model = rng.choice(sorted(load.models))
    return http_outcome(await load.http.post(f"/v1/models/{model}/segment", content=load.bomb))


async def http_list_models(load: Load, rng: random.Random) -> str:
    return http_outcome(await load.http.get("/v1/models"))


async def http_give_up_waiting(load: Load, rng: random.Random) -> str:
    """The whole request is sent, then the client closes the connection while the service works."""
    model, _, image = load.pick(rng)
    try:
        response = await asyncio.wait_for(
            load.http.post(f"/v1/models/{model}/segment", content=image.data),
            timeout=rng.uniform(0.005, 0.05),
        )
    except TimeoutError:
        return CANCELLED
    return http_outcome(response)


async def http_give_up_uploading(load: Load, rng: random.Random) -> str:
    """Headers and half the body, then the connection is closed."""
    model, _, image = load.pick(rng)
    parts = urlsplit(load.url)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"POST /v1/models/{model}/segment HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: {image.content_type}\r\nContent-Length: {len(image.data)}\r\n\r\n"
    )
    writer.write(head.encode() + image.data[: len(image.data) // 2])
    await writer.drain()
    await asyncio.sleep(rng.uniform(0.0, 0.05))
    writer.close()
    await writer.wait_closed()
    return CANCELLED


# --- gRPC -----------------------------------------------------------------------------------------------


def grpc_request(load: Load, rng: random.Random, **overrides) -> tuple[pb.SegmentRequest, TestImage, str]:
    model, fmt, image = load.pick(rng)
    fields = dict(model=model, image=image.data, content_type=image.content_type, format=GRPC_FORMAT[fmt])
    fields["overlay"] = rng.random() < 0.3
    fields.update(overrides)
    return pb.SegmentRequest(**fields), image, fmt


def check_response(response, request: pb.SegmentRequest, image: TestImage, fmt: str) -> str | None:
    if response.HasField("error"):
        return f"frame error {response.error.code}"
    if response.model != request.model or (response.width, response.height) != (image.width, image.height):
        return "answer for another model or size"
    present = {
        "png": bool(response.mask_png),
        "coco_panoptic": bool(response.mask_png),
        "raw": len(response.mask_raw) >= image.width * image.height,
        "rle": bool(response.rles) or (response.task == "instance" and not response.classes),
        "polygons": True,  # a class may have no polygon (too small to outline): nothing to require
    }[fmt]
    if not present:
        return f"no {fmt} mask"
    if request.overlay and not response.overlay_png:
        return "no overlay"
    return None


async def grpc_call(load: Load, call) -> tuple[str, object]:
    try:
        return "gRPC OK", await call
    except grpc.aio.AioRpcError as e:
        return f"gRPC {e.code().name}", None


async def grpc_segment(load: Load, rng: random.Random) -> str:
    request, image, fmt = grpc_request(load, rng)
    outcome, response = await grpc_call(
        load, load.stub.Segment(request, timeout=load.timeout_s, metadata=load.metadata)
    )
    wrong = check_response(response, request, image, fmt) if response is not None else None
    return f"gRPC OK wrong answer: {wrong}" if wrong else outcome


async def grpc_bad_image(load: Load, rng: random.Random) -> str:
    request, _, _ = grpc_request(load, rng, image=rng.randbytes(rng.randrange(16, 4096)), content_type="")
    return (await grpc_call(load, load.stub.Segment(request, timeout=load.timeout_s)))[0]


async def grpc_unknown_model(load: Load, rng: random.Random) -> str:
    request, _, _ = grpc_request(load, rng, model="no-such-model")
    return (await grpc_call(load, load.stub.Segment(request, timeout=load.timeout_s)))[0]


async def grpc_list_models(load: Load, rng: random.Random) -> str:
    return (await grpc_call(load, load.stub.ListModels(pb.ListModelsRequest(), timeout=load.timeout_s)))[0]


async def grpc_stream(load: Load, rng: random.Random) -> str:
    """Three frames, the middle one not an image: two answers and an error frame, the stream stays OK."""
    frames = [grpc_request(load, rng, frame_id=str(i)) for i in range(3)]
    bad = pb.SegmentRequest(model=frames[1][0].model, image=b"not an image", frame_id="1")
    requests = [frames[0][0], bad, frames[2][0]]
    call = load.stub.SegmentStream(iter(requests), timeout=load.timeout_s, metadata=load.metadata)
    answers = {}
    try:
        async for response in call:
            answers[response.frame_id] = response
    except grpc.aio.AioRpcError as e:
        return f"gRPC {e.code().name}"
    if sorted(answers) != ["0", "1", "2"]:
        return f"gRPC OK wrong answer: frames {sorted(answers)}"
    if not answers["1"].HasField("error") or answers["1"].error.code != "invalid_image":
        return "gRPC OK wrong answer: the bad frame was not an invalid_image error frame"
    for i in ("0", "2"):
        request, image, fmt = frames[int(i)]
        if wrong := check_response(answers[i], request, image, fmt):
            return f"gRPC OK wrong answer: frame {i}: {wrong}"
    return "gRPC OK"


async def grpc_cancel_call(load: Load, rng: random.Random) -> str:
    request, _, _ = grpc_request(load, rng)
    call = load.stub.Segment(request, timeout=load.timeout_s, metadata=load.metadata)
    await asyncio.sleep(rng.uniform(0.002, 0.05))
    if call.done():
        return (await grpc_call(load, call))[0]
    call.cancel()
    return CANCELLED


async def grpc_cancel_stream(load: Load, rng: random.Random) -> str:
    """A stream cancelled after its first answer, with a second frame on its way."""
    first, _, _ = grpc_request(load, rng, frame_id="0")
    second, _, _ = grpc_request(load, rng, frame_id="1")
    call = load.stub.SegmentStream(timeout=load.timeout_s, metadata=load.metadata)
    try:
        await call.write(first)
        await call.read()
        await call.write(second)
    except grpc.aio.AioRpcError as e:
        return f"gRPC {e.code().name}"
    call.cancel()
    return CANCELLED


def kinds() -> list[Kind]:
    """The mix (weights are relative)."""
    e = frozenset
    return [
        Kind("http segment (JSON, any format)", 20, e({"HTTP 200"}), http_segment),
        Kind("http segment (PNG body)", 6, e({"HTTP 200"}), http_png_body),
        Kind("http segment (multipart)", 3, e({"HTTP 200"}), http_multipart),
        Kind("http not an image", 2, e({"HTTP 400 invalid_image"}), http_bad_image, False),
        Kind("http unknown model", 1, e({"HTTP 404 model_not_found"}), http_unknown_model, False),
        Kind("http unknown format", 1, e({"HTTP 400 invalid_argument"}), http_bad_format, False),
        Kind("http pixel bomb", 1, e({"HTTP 413 payload_too_large"}), http_pixel_bomb, False),
        Kind("http list models", 1, e({"HTTP 200"}), http_list_models, False),
        Kind("http closed while served", 3, e({CANCELLED, "HTTP 200"}), http_give_up_waiting),
        Kind("http closed mid-upload", 2, e({CANCELLED}), http_give_up_uploading, False),
        Kind("grpc segment (any format)", 20, e({"gRPC OK"}), grpc_segment),
        Kind("grpc stream (3 frames, 1 bad)", 5, e({"gRPC OK"}), grpc_stream),
        Kind("grpc not an image", 2, e({"gRPC INVALID_ARGUMENT"}), grpc_bad_image, False),
        Kind("grpc unknown model", 1, e({"gRPC NOT_FOUND"}), grpc_unknown_model, False),
        Kind("grpc list models", 1, e({"gRPC OK"}), grpc_list_models, False),
        Kind("grpc call cancelled", 3, e({CANCELLED, "gRPC OK"}), grpc_cancel_call),
        Kind("grpc stream cancelled", 2, e({CANCELLED}), grpc_cancel_stream),
    ]


def documented(kind: Kind, outcome: str) -> bool:
    return outcome in kind.expected or (kind.segment and outcome in BUSY)


async def attempt(load: Load, kind: Kind, rng: random.Random) -> None:
    """One request of ``kind``; its outcome counted."""
    try:
        outcome = await kind.run(load, rng)
    except Exception as e:  # whatever it is, it is an outcome no kind documents
        outcome = f"{type(e).__name__}: {e}"[:120]
    load.counts[(kind.name, outcome)] += 1


async def cover(load: Load, mix: list[Kind], rng: random.Random, on_done: Callable[[], None]) -> None:
    """Every kind once for every model and format: the first part of the warm-up, so that every set of
    metric labels the load can create exists before the sampling starts."""
    for kind in mix:
        for model, task in sorted(load.models.items()):
            for fmt in FORMATS[task]:
                load.forced = (model, fmt)
                try:
                    await attempt(load, kind, rng)
                finally:
                    load.forced = None
                on_done()


async def worker(
    load: Load, mix: list[Kind], seed: int, stop: asyncio.Event, on_done: Callable[[], None]
) -> None:
    rng = random.Random(seed)
    weights = [k.weight for k in mix]
    while not stop.is_set():
        await attempt(load, rng.choices(mix, weights)[0], rng)
        on_done()
