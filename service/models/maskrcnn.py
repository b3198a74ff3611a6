"""Builders for torchvision's Mask R-CNN (``torchvision.maskrcnn_resnet50_fpn`` and ``..._v2``).

Built with random weights (``weights=None, weights_backbone=None``: nothing downloads); the trained
state dict comes from the repository's safetensors file. ``num_classes`` counts the background, as
torchvision's detectors do (class 0 of the repository entry).

Three things the entry cannot set here, each with its own home:
- the input transform (``min_size``, ``max_size``, ``image_mean``, ``image_std``): the entry's
  ``input`` policy does it in the codec, and the runner bypasses the model's transform
  (``service/models/instance_inference.py`` says why);
- the detection thresholds (``box_score_thresh``, ``box_nms_thresh``, ``box_detections_per_img``):
  the entry's ``instance`` section, applied by the runner;
- ``weights``, ``weights_backbone``, ``num_classes``, ``progress``: fixed above.
Every other ``MaskRCNN`` keyword (e.g. ``rpn_post_nms_top_n_test``) passes through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.ops.misc import FrozenBatchNorm2d

RESERVED = {
    "weights": "weights load from the entry's safetensors file",
    "weights_backbone": "weights load from the entry's safetensors file",
    "progress": "nothing downloads",
    "num_classes": "it comes from the entry's class list",
    "min_size": "set input: {mode: shortest_edge, size: ...}",
    "max_size": "set input: {mode: shortest_edge, max_size: ...}",
    "image_mean": "set input.mean",
    "image_std": "set input.std",
    "box_score_thresh": "set instance.score_threshold",
    "box_nms_thresh": "set instance.nms_threshold",
    "box_detections_per_img": "set instance.max_detections",
}


def _check_arguments(kwargs: dict[str, Any]) -> None:
    taken = sorted(set(kwargs) & set(RESERVED))
    if taken:
        raise TypeError("; ".join(f"{k} is not an argument here: {RESERVED[k]}" for k in taken))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` with a fresh ``FrozenBatchNorm2d`` of the same size
    (statistics not copied: the builder's model gets its state dict loaded afterwards)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            freeze_batchnorm(child)
    return module


def build_maskrcnn_resnet50_fpn(num_classes: int, **kwargs: Any) -> nn.Module:
    """Mask R-CNN, ResNet-50-FPN (v1), its ResNet body with ``FrozenBatchNorm2d``.

    Why frozen: torchvision builds the body that way whenever it starts from pretrained weights (how
    Mask R-CNNs are trained in practice), and such a state dict has no ``num_batches_tracked``
    entries, which a ``BatchNorm2d`` body would refuse in a strict load. ``FrozenBatchNorm2d`` drops
    those entries when loading, so a model trained from scratch (``BatchNorm2d``) loads too, and in
    eval mode both compute the same normalisation.
    """
    _check_arguments(kwargs)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    freeze_batchnorm(model.backbone.body)
    return model


def build_maskrcnn_resnet50_fpn_v2(num_classes: int, **kwargs: Any) -> nn.Module:
    """Mask R-CNN v2, ResNet-50-FPN (torchvision builds it with ``BatchNorm2d`` in every case)."""
    _check_arguments(kwargs)
    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "torchvision.maskrcnn_resnet50_fpn": build_maskrcnn_resnet50_fpn,
    "torchvision.maskrcnn_resnet50_fpn_v2": build_maskrcnn_resnet50_fpn_v2,
}
