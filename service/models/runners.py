"""The runner for a repository entry: the network loaded from its weights, with its task's post-processing."""

from __future__ import annotations

from pathlib import Path

from service.config import ModelSpec
from service.models.inference import Runner
from service.models.registry import load_model


def build_runner(spec: ModelSpec, weights: Path | None) -> Runner:
    """Semantic models get ``Runner``; panoptic ones ``PanopticRunner`` (grouping on the device)."""
    model = load_model(spec, weights)
    if spec.task == "panoptic":
        from service.models.panoptic_inference import PanopticRunner  # only panoptic models need it

        return PanopticRunner(spec, model)
    return Runner(spec, model)
