"""U-Net (Ronneberger et al., 2015) with BatchNorm: an encoder-decoder joined by skip connections.

Inputs must have sides that are a multiple of ``2**depth`` (a repository entry's ``input.size_divisor``
pads images to it). The network returns logits of shape [B, num_classes, H, W] at the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetTrunk(nn.Module):
    """Encoder and decoder without a head: returns features [B, base_width, H, W].

    Shared by the semantic U-Net and the panoptic network, which put different heads on it.
    """

    def __init__(self, in_channels: int = 3, depth: int = 4, base_width: int = 32, bilinear: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.out_channels = base_width
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], bilinear) for i in reversed(range(depth))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.depth
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"input sides must be multiples of {multiple} (depth {self.depth}), got "
                f"{tuple(x.shape[-2:])}; pad the input (input.size_divisor in the repository entry)"
            )
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return x


class UNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 4,
        base_width: int = 32,
        bilinear: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = UNetTrunk(in_channels, depth, base_width, bilinear)
        self.head = nn.Conv2d(base_width, num_classes, 1)
        self.size_divisor = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_unet(
    *, num_classes: int, in_channels: int = 3, depth: int = 4, base_width: int = 32, bilinear: bool = True
) -> UNet:
    """Builder used by the model registry (keyword-only, as in torchvision's builders)."""
    return UNet(num_classes, in_channels, depth, base_width, bilinear)
