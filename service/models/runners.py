"""The runner for a repository entry: the network loaded from its weights, with its task's post-processing."""

from __future__ import annotations

from pathlib import Path

from service.config import ModelSpec
from service.models.inference import Runner
from service.models.registry import load_model


def build_runner(spec: ModelSpec, weights: Path | None) -> Runner:
    """Semantic models get ``Runner``; panoptic ones ``PanopticRunner`` (grouping on the device);
    instance ones ``InstanceRunner`` (detections, masks pasted at the original resolution)."""
    model = load_model(spec, weights)
    if spec.task == "instance":
        from service.models.instance_inference import InstanceRunner  # imports torchvision's detection

        return InstanceRunner(spec, model)
    if spec.task == "panoptic":
        from service.models.panoptic_inference import PanopticRunner  # only panoptic models need it

        return PanopticRunner(spec, model)
    return Runner(spec, model)
