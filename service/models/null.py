"""The null model: near-zero compute, same input and output contract as a semantic network.

Used by the benchmark to measure the serving pipeline's own overhead.
"""

from __future__ import annotations

import torch
from torch import nn


class NullSegmenter(nn.Module):
    """Logits from a 1x1 convolution of the input: class 0 everywhere unless weights say otherwise."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, num_classes, 1)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            self.proj.bias.copy_(torch.linspace(1.0, 0.0, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def build_null(*, num_classes: int) -> NullSegmenter:
    return NullSegmenter(num_classes)
