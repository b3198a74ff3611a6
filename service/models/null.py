"""The null model: near-zero compute, same input and output contract as a semantic network.

Used by the benchmark to measure the serving pipeline's own overhead, and (with
``device_ms_per_image``) to stand in for an accelerator-bound model on a machine without one.
"""

from __future__ import annotations

import time

import torch
from torch import nn


class NullSegmenter(nn.Module):
    """Logits from a 1x1 convolution of the input: class 0 everywhere unless weights say otherwise.

    ``device_ms_per_image`` > 0 makes each forward wait that long per image of the batch without
    computing, as a replica waits on a GPU: its replicas then bound throughput (1000 / ms images/s
    each) while leaving the CPU to the rest of the request path, which is what scaling replicas out
    over nodes is about (``loadtests/scale.py``).
    """

    def __init__(self, num_classes: int, device_ms_per_image: float = 0.0) -> None:
        super().__init__()
        if device_ms_per_image < 0:
            raise ValueError(f"device_ms_per_image must be >= 0, got {device_ms_per_image}")
        self.device_s_per_image = device_ms_per_image / 1000.0
        self.proj = nn.Conv2d(3, num_classes, 1)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            self.proj.bias.copy_(torch.linspace(1.0, 0.0, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_s_per_image:
            time.sleep(self.device_s_per_image * x.shape[0])
        return self.proj(x)


def build_null(*, num_classes: int, device_ms_per_image: float = 0.0) -> NullSegmenter:
    return NullSegmenter(num_classes, device_ms_per_image)
