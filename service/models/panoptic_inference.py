"""Batched panoptic inference: the semantic ``Runner`` with Panoptic-DeepLab post-processing.

The forward and batching are the base class's; only the post-processing differs. Per item, on the
model's device: centres are found on the centre heatmap at the model's own (unpadded) resolution,
where ``nms_kernel`` was tuned, and mapped to original pixel coordinates; semantic logits and offsets
are brought back to the original geometry (offsets rescaled per axis, since they are lengths in
pixels); then grouping, merging and scoring run at the original resolution and only the int maps
cross to the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from service.config import ModelSpec, PanopticSpec
from service.imaging.geometry import Geometry, restore
from service.imaging.panoptic import (
    PanopticOutput,
    find_instance_centers,
    panoptic_from_centers,
    to_coco_segments,
)
from service.models.inference import GroupOutput, Runner
from service.types import PreparedImage


def panoptic_params(spec: ModelSpec) -> PanopticSpec:
    """The spec's post-processing parameters (config validation checked them when it loaded)."""
    if spec.panoptic is None:
        raise ValueError(f"model {spec.name!r} is not a panoptic model (task {spec.task!r})")
    return spec.panoptic


def panoptic_item(outputs: dict[str, torch.Tensor], geometry: Geometry, spec: ModelSpec) -> PanopticOutput:
    """One item's network outputs at the padded input size -> its panoptic result at the original size.

    outputs: ``semantic [C, Hp, Wp]``, ``center [1, Hp, Wp]``, ``offset [2, Hp, Wp]`` (dy, dx in input
    pixels). ``stuff_area`` counts pixels at the model's input scale, so it is scaled by the area
    ratio: the same picture gives the same segments whatever size the client sent it at.
    """
    params = panoptic_params(spec)
    sh, sw = geometry.scaled
    h, w = geometry.original
    heatmap = outputs["center"][:, :sh, :sw].float()
    centers = find_instance_centers(heatmap, params.center_threshold, params.nms_kernel, params.top_k)
    center_scores = heatmap[0, centers[:, 0], centers[:, 1]]
    factor = torch.tensor([h / sh, w / sw], device=heatmap.device)
    # Pixel centres map as in bilinear resizing with align_corners=False.
    centers_original = (centers.float() + 0.5) * factor - 0.5
    semantic = restore(outputs["semantic"].float(), geometry)
    offsets = restore(outputs["offset"].float(), geometry) * factor.view(2, 1, 1)
    return panoptic_from_centers(
        semantic,
        centers_original,
        center_scores,
        offsets,
        thing_ids=spec.thing_ids,
        stuff_area=round(params.stuff_area * (h * w) / (sh * sw)),
        label_divisor=params.label_divisor,
    )


def panoptic_answer(result: PanopticOutput, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(semantic labels uint8/uint16 [H, W], COCO ids int32 [H, W], segments) on the CPU."""
    divisor = panoptic_params(spec).label_divisor
    ids, segments = to_coco_segments(result.panoptic, spec.thing_ids, divisor, result.scores)
    if spec.num_classes <= 256:
        return result.labels.to(torch.uint8).cpu().numpy(), ids, segments
    return result.labels.to(torch.int32).cpu().numpy().astype(np.uint16), ids, segments


class PanopticRunner(Runner):
    """``Runner`` whose post-processing gives a semantic map plus COCO panoptic ids and segments."""

    def __init__(self, spec: ModelSpec, model: nn.Module, device: torch.device | None = None) -> None:
        panoptic_params(spec)  # a semantic spec is refused before the model moves to its device
        super().__init__(spec, model, device)

    def outputs(self, raw: object) -> dict[str, torch.Tensor]:
        """The panoptic network's dict (semantic, center, offset) as it is."""
        return raw  # type: ignore[return-value]

    def postprocess(self, outputs: dict[str, torch.Tensor], items: list[PreparedImage]) -> GroupOutput:
        labels, extras = [], []
        for i, item in enumerate(items):
            result = panoptic_item({k: v[i] for k, v in outputs.items()}, item.geometry, self.spec)
            semantic, ids, segments = panoptic_answer(result, self.spec)
            labels.append(semantic)
            extras.append({"panoptic": ids, "segments": segments})
        return GroupOutput(labels, extras)

    def warm_up(self) -> None:
        """One forward and one post-processing at the input size (lazy kernels, first allocations)."""
        d = self.spec.input.size_divisor
        side = -(-self.spec.input.size // d) * d
        x = torch.zeros((1, 3, side, side), device=self.device)
        outputs = self.forward(x)
        result = panoptic_item(
            {k: v[0] for k, v in outputs.items()}, Geometry(*[(side, side)] * 3), self.spec
        )
        panoptic_answer(result, self.spec)
        self._sync()
