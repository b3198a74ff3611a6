"""What the Open Inference Protocol says about the server and its models: tensors, metadata, config.

Every served model has the same three inputs, of which a request sends exactly one:

* ``image``      BYTES ``[N]`` (or ``[N, 1]``, Triton's one-element-per-item form): encoded images
  (JPEG, PNG, ...), decoded by the codec with its limits;
* ``pixels``     UINT8 ``[N, H, W, 3]``: RGB pixels, fitted to the model's input policy like a decoded
  image (the label map has the image's size, as over ``/v1``);
* ``normalized`` FP32 ``[N, 3, H, W]``: the network's input as it is (the model's channel order, pixel
  range, mean and std applied; H and W multiples of its ``size_divisor``; no resize: the label map is
  H x W).

The outputs depend on the task: semantic ``labels``; panoptic ``labels``, ``panoptic_ids`` and
``segments``; instance ``instance_ids`` and ``instances`` (see ``outputs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service import __version__
from service.config import ModelSpec
from service.errors import ModelVersionNotFound

SERVER_NAME = "segserve"
EXTENSIONS = ("binary_tensor_data", "model_configuration")
"""Triton's names for the extensions served: the HTTP binary tensor data, and ``.../config`` /
``ModelConfig`` (what perf_analyzer reads)."""
PLATFORMS = {"pytorch": "pytorch", "torch_export": "pytorch_torch_export", "onnx": "onnxruntime_onnx"}
"""The metadata's platform by the entry's artefact ``format`` (Triton's name for ONNX Runtime)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """With the batch dimension first; -1 where the size varies."""
    doc: str = ""

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


IMAGE = TensorSpec("image", "BYTES", (-1,), "encoded images (JPEG, PNG, WebP, BMP, TIFF, GIF)")
PIXELS = TensorSpec("pixels", "UINT8", (-1, -1, -1, 3), "RGB pixels, fitted to the input policy")
NORMALIZED = TensorSpec("normalized", "FP32", (-1, 3, -1, -1), "the network's input, already normalized")
INPUTS = (IMAGE, PIXELS, NORMALIZED)
INPUT_FORMATS = {"pixels": "FORMAT_NHWC", "normalized": "FORMAT_NCHW"}

SEGMENTS = TensorSpec("segments", "BYTES", (-1,), "per image: JSON list of COCO panoptic segments_info")
INSTANCES = TensorSpec("instances", "BYTES", (-1,), "per image: JSON list of instances (id, class, box)")
PANOPTIC_IDS = TensorSpec("panoptic_ids", "INT32", (-1, -1, -1), "COCO panoptic segment ids (0 = void)")
MAPS = (-1, -1, -1)


def label_datatype(spec: ModelSpec) -> str:
    """The label map's type: what the runner returns (8-bit up to 256 classes)."""
    return "UINT8" if spec.num_classes <= 256 else "UINT16"


def instance_id_datatype(spec: ModelSpec) -> str:
    """8-bit while every id of ``max_detections`` instances fits, as the instance id map is."""
    assert spec.instance is not None
    return "UINT8" if spec.instance.max_detections <= 255 else "UINT16"


def outputs(spec: ModelSpec) -> tuple[TensorSpec, ...]:
    labels = TensorSpec("labels", label_datatype(spec), MAPS, "class id per pixel")
    if spec.task == "panoptic":
        return labels, PANOPTIC_IDS, SEGMENTS
    if spec.task == "instance":
        ids = TensorSpec("instance_ids", instance_id_datatype(spec), MAPS, "0 background, k: instances[k-1]")
        return ids, INSTANCES
    return (labels,)


def parameters(spec: ModelSpec, info: dict[str, Any]) -> dict[str, str | int]:
    """The model's description (``core.get_model``) as protocol parameters: strings, numbers; nested
    values (classes with names and colours, the input policy) as JSON strings. The input policy
    adds the channel order and pixel range: with mean and std, what a ``normalized`` input applies."""
    policy = {**info["input"], "channels": spec.input.channels, "pixel_range": spec.input.pixel_range}
    params: dict[str, str | int] = {
        "task": info["task"],
        "version": info["version"],
        "weights_digest": info["weights_digest"],
        "architecture": info["architecture"],
        "max_batch_size": info["max_batch_size"],
        "classes": json.dumps(info["classes"]),
        "input": json.dumps(policy),
    }
    if "instance" in info:
        params["instance"] = json.dumps(info["instance"])
    return params


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(spec: ModelSpec, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": PLATFORMS[spec.format],
        "inputs": [t.metadata() for t in INPUTS],
        "outputs": [t.metadata() for t in outputs(spec)],
        "parameters": parameters(spec, info),
    }


def model_config(spec: ModelSpec, info: dict[str, Any]) -> dict[str, Any]:
    """Triton's model configuration (its JSON form) for the fields perf_analyzer and tritonclient read.

    ``max_batch_size`` 0: in Triton's terms the dims are the whole shapes, as the metadata states them,
    with the image count N first (Triton's ``max_batch_size > 0`` would hide a batch dimension, and the
    ``image`` input ``[N]`` would have none left). A request holds at most the ``max_batch_size``
    parameter's images; each is an item of the model's batcher. Every input is optional: a request
    sends one of them."""
    inputs = [
        {
            "name": t.name,
            "data_type": _config_type(t.datatype),
            "format": INPUT_FORMATS.get(t.name, "FORMAT_NONE"),
            "dims": list(t.shape),
            "optional": True,
        }
        for t in INPUTS
    ]
    config_outputs = [
        {"name": t.name, "data_type": _config_type(t.datatype), "dims": list(t.shape)} for t in outputs(spec)
    ]
    return {
        "name": spec.name,
        "platform": PLATFORMS[spec.format],
        "backend": SERVER_NAME,
        "max_batch_size": 0,
        "input": inputs,
        "output": config_outputs,
        "parameters": {k: {"string_value": str(v)} for k, v in parameters(spec, info).items()},
    }


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def check_version(spec: ModelSpec, version: str | None) -> ModelSpec:
    """A request may name the model's version; the only one served is the repository entry's."""
    if version and version != spec.version:
        raise ModelVersionNotFound(spec.name, version, spec.version)
    return spec
