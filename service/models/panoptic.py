"""Panoptic-DeepLab-style network (Cheng et al., 2020) on the U-Net trunk.

One shared trunk (``UNetTrunk``) at full input resolution, three light heads:

- ``semantic``: class logits ``[B, num_classes, H, W]``;
- ``center``: a regressed heatmap ``[B, 1, H, W]``, trained against Gaussians (peak 1) at instance
  centres with MSE, as in Panoptic-DeepLab: raw values, no sigmoid (the post-processing thresholds it);
- ``offset``: ``[B, 2, H, W]``, ``(dy, dx)`` in input pixels from each pixel to its instance's centre.

Panoptic-DeepLab uses separate semantic and instance decoders on a ResNet; on our small synthetic
images a shared U-Net decoder with a 3x3 conv per head is enough, and it trains in minutes on a CPU.
Inputs must have sides that are multiples of ``2**depth`` (the codec pads to ``size_divisor``).
"""

from __future__ import annotations

import torch
from torch import nn

from service.models.unet import UNetTrunk


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU -> 1x1 conv: each task gets a little capacity of its own."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class PanopticUNet(nn.Module):
    """``forward(x [B, 3, H, W])`` -> ``{"semantic": [B, C, H, W], "center": [B, 1, H, W],
    "offset": [B, 2, H, W]}``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 4,
        base_width: int = 16,
        bilinear: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = UNetTrunk(in_channels, depth, base_width, bilinear)
        self.semantic = _head(base_width, num_classes)
        self.center = _head(base_width, 1)
        self.offset = _head(base_width, 2)
        self.size_divisor = 2**depth

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        return {
            "semantic": self.semantic(features),
            "center": self.center(features),
            "offset": self.offset(features),
        }


def build_panoptic_unet(
    *, num_classes: int, in_channels: int = 3, depth: int = 4, base_width: int = 16, bilinear: bool = True
) -> PanopticUNet:
    """Builder used by the model registry (keyword-only, like ``build_unet``)."""
    return PanopticUNet(num_classes, in_channels, depth, base_width, bilinear)
