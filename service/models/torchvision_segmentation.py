"""torchvision's semantic segmentation networks, built offline: ``weights=None, weights_backbone=None``.

They return a dict (``out``, plus ``aux`` when built with ``aux_loss=True``); the entry names the key
to serve (``output.key: out``) and the runner takes that one, ignoring ``aux``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn
from torchvision.models import segmentation

from service.config import TORCHVISION_SEGMENTATION


def build_torchvision(name: str, *, num_classes: int, **arguments: Any) -> nn.Module:
    for key in ("weights", "weights_backbone", "num_classes"):
        if key in arguments:
            raise TypeError(f"argument {key!r} cannot be set (weights come from the entry's file only)")
    return getattr(segmentation, name)(
        weights=None, weights_backbone=None, num_classes=num_classes, **arguments
    )


BUILDERS = {
    name: partial(build_torchvision, name.removeprefix("torchvision.")) for name in TORCHVISION_SEGMENTATION
}
