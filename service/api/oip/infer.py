"""One Open Inference Protocol inference, whatever the transport: tensors in, the core, tensors out.

The transports (``http.py``, ``grpc.py``) turn their wire form into an ``InferRequest`` of numpy values
and an ``InferAnswer`` back into theirs. Here the one input tensor becomes N images, each segmented by
the core as its own request (so each is an item of the model's batcher and batches with everyone
else's requests), and the N answers become the output tensors asked for.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.api.core import SegmentationCore
from service.api.oip import model as oip_model
from service.api.oip.model import TensorSpec
from service.api.oip.tensors import NUMPY_TYPES, Values
from service.config import ModelSpec
from service.errors import InvalidArgument
from service.types import ImageInput, ImageTensor, SegmentOptions, SegmentResult


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: Values
    """numpy array of ``shape`` (numeric types) or the flat list of elements (BYTES)."""


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)

    def timeout_s(self) -> float | None:
        """The ``timeout`` parameter (microseconds, Triton's convention) in seconds; None when absent."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgument(
                f"parameter 'timeout' must be a positive number of microseconds, got {value!r}"
            )
        return value / 1e6


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: Values


@dataclass
class InferAnswer:
    outputs: list[OutputTensor]
    requested: list[RequestedOutput]
    """The request's outputs (their parameters), in the order of ``outputs``."""
    results: list[SegmentResult]
    """One per image, in order (the first goes to the access log)."""


# --- inputs ---------------------------------------------------------------------------------------------


def images_of(spec: ModelSpec, request: InferRequest) -> list[ImageInput]:
    """The one input tensor as N images (400 for any other input, type or shape)."""
    known = {t.name: t for t in oip_model.INPUTS}
    if len(request.inputs) != 1:
        raise InvalidArgument(f"send exactly one input, one of {', '.join(known)}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    expected = known.get(tensor.name)
    if expected is None:
        raise InvalidArgument(
            f"unknown input {tensor.name!r}; model {spec.name!r} takes one of {', '.join(known)}"
        )
    if tensor.datatype != expected.datatype:
        raise InvalidArgument(f"input {tensor.name!r} must be {expected.datatype}, got {tensor.datatype}")
    _check_shape(tensor, expected, spec)
    if tensor.name == "image":
        return list(tensor.values)  # type: ignore[arg-type]
    array = tensor.values
    assert isinstance(array, np.ndarray)
    if tensor.name == "pixels":
        return [ImageTensor(np.ascontiguousarray(image)) for image in array]
    if not np.isfinite(array).all():
        raise InvalidArgument("input 'normalized' holds NaN or infinite values")
    return [ImageTensor(np.ascontiguousarray(chw.transpose(1, 2, 0))) for chw in array]


def _check_shape(tensor: InputTensor, expected: TensorSpec, spec: ModelSpec) -> None:
    shape = tensor.shape
    if tensor.name == "image" and len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]  # [N, 1]: Triton's convention for one element per batch item (perf_analyzer's)
    rank = len(shape) == len(expected.shape)
    if not rank or 0 in shape or any(e not in (-1, s) for e, s in zip(expected.shape, shape, strict=True)):
        raise InvalidArgument(
            f"input {tensor.name!r} must have shape {list(expected.shape)} (-1: any size above 0), "
            f"got {list(shape)}"
        )
    limit = spec.batching.max_batch_size
    if shape[0] > limit:
        raise InvalidArgument(
            f"a request to model {spec.name!r} holds at most {limit} images (its max_batch_size), "
            f"got {shape[0]}"
        )


def check_outputs(spec: ModelSpec, request: InferRequest) -> list[tuple[TensorSpec, RequestedOutput]]:
    """The outputs asked for (all of the model's when none are), 400 for an unknown one."""
    available = {t.name: t for t in oip_model.outputs(spec)}
    asked = request.outputs or [RequestedOutput(name) for name in available]
    chosen = []
    for output in asked:
        if output.name not in available:
            raise InvalidArgument(
                f"unknown output {output.name!r}; model {spec.name!r} has {', '.join(available)}"
            )
        if output.parameters.get("class_count"):
            raise InvalidArgument("the classification extension (class_count) is not supported")
        chosen.append((available[output.name], output))
    return chosen


# --- the inference --------------------------------------------------------------------------------------


async def infer(
    core: SegmentationCore,
    spec: ModelSpec,
    request: InferRequest,
    request_id: str,
    deadline: float,
    protocol: str,
) -> InferAnswer:
    """Segment the request's N images concurrently (N items of the model's batcher), then assemble the
    outputs asked for. The first failure fails the request and cancels the other images."""
    chosen = check_outputs(spec, request)
    images = images_of(spec, request)
    options = SegmentOptions(
        model=spec.name,
        format="raw",
        request_id=request_id,
        deadline=deadline,
        protocol=protocol,  # type: ignore[arg-type]
    )
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(core.segment(spec, image, None, options)) for image in images]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    results = [task.result() for task in tasks]
    outputs = [assemble(t, results) for t, _ in chosen]
    return InferAnswer(outputs, [r for _, r in chosen], results)


def assemble(tensor: TensorSpec, results: list[SegmentResult]) -> OutputTensor:
    """One output tensor from the N answers: maps stacked to ``[N, H, W]``, JSON lists one per image."""
    if tensor.datatype == "BYTES":
        key = "segments" if tensor.name == "segments" else "instances"
        values = [json.dumps(getattr(r, key) or []).encode() for r in results]
        return OutputTensor(tensor.name, tensor.datatype, [len(results)], values)
    sizes = {(r.height, r.width) for r in results}
    if len(sizes) > 1:
        raise InvalidArgument(
            f"the images of one request must have one size to give one [N, H, W] {tensor.name!r} tensor; "
            f"got {sorted(f'{w}x{h}' for h, w in sizes)}: send them in separate requests"
        )
    dtype = NUMPY_TYPES[tensor.datatype]
    maps = np.stack([_map(tensor.name, r) for r in results]).astype(dtype, copy=False)
    return OutputTensor(tensor.name, tensor.datatype, list(maps.shape), maps)


def _map(name: str, result: SegmentResult) -> np.ndarray:
    """A raw answer's label / instance id map, or (``panoptic_ids``) its COCO id map."""
    if name == "panoptic_ids":
        raw, dtype = result.panoptic_raw, "int32"
    else:
        raw, dtype = result.mask_raw, result.mask_dtype
    assert raw is not None, f"a raw answer without {name}"
    return np.frombuffer(raw, dtype).reshape(result.height, result.width)
