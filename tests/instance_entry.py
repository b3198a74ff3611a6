"""A small Mask R-CNN repository entry shared by the instance tests (unit and integration).

Small on purpose, so a CPU runs it in a fraction of a second: images scaled to 96 px on the short
side (128 at most on the long), 50 proposals, 5 detections. Score threshold 0: with random weights
a detector's scores are low, and the tests need detections to compare.
"""

from __future__ import annotations

from typing import Any

from service.config import ModelSpec

CLASSES = [
    {"id": 0, "name": "background", "color": [0, 0, 0]},
    {"id": 1, "name": "circle", "color": [230, 25, 75]},
    {"id": 2, "name": "rectangle", "color": [60, 180, 75]},
]


def instance_entry(
    name: str = "maskrcnn-tiny", weights: str = "maskrcnn-tiny.safetensors", **changes: Any
) -> dict:
    entry = {
        "name": name,
        "task": "instance",
        "architecture": "torchvision.maskrcnn_resnet50_fpn",
        "arguments": {"rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50},
        "weights": weights,
        "classes": CLASSES,
        "input": {"mode": "shortest_edge", "size": 96, "max_size": 128, "size_divisor": 32},
        "instance": {"score_threshold": 0.0, "max_detections": 5, "mask_threshold": 0.5},
        "batching": {"max_batch_size": 4},
        "deployment": {"num_replicas": 1, "num_cpus": 0, "torch_threads": 1},
    }
    for key, value in changes.items():
        entry[key] = {**entry[key], **value} if isinstance(value, dict) and key in entry else value
    return entry


def instance_spec(**changes: Any) -> ModelSpec:
    return ModelSpec.model_validate(instance_entry(**changes))
