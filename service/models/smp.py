"""segmentation_models_pytorch architectures, built offline: random init, no encoder weights.

The entry names the architecture (``smp.Unet``) and its arguments (``encoder_name: resnet34``, ...);
the trained state dict comes from the entry's safetensors file. ``encoder_weights`` is always None, so
building never downloads (no hub, no timm weights): the repository's weights are the only ones.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from service.config import SMP_ARCHITECTURES, ModelSpec
from service.models.registry import EntryError

# Arguments the entry may not set: the entry's classes, our 3-channel input, logits out, offline build.
FIXED = {
    "classes": "comes from the entry's class list",
    "in_channels": "the service feeds 3-channel images",
    "encoder_weights": "is always None here (nothing downloads; the weights file has the trained values)",
    "activation": "is None here: the network returns scores; say output.kind instead",
    "aux_params": "adds a classification head that changes the output to a tuple",
}


def build_smp(architecture: str, *, num_classes: int, **arguments: Any) -> nn.Module:
    """``smp.<Arch>`` with ``encoder_weights=None`` and ``num_classes`` classes."""
    for key, why in FIXED.items():
        if key in arguments:
            raise TypeError(f"argument {key!r} cannot be set: it {why}")
    return smp.create_model(
        architecture, encoder_weights=None, classes=num_classes, in_channels=3, activation=None, **arguments
    )


def required_divisor(model: nn.Module) -> int:
    """The multiple the input's height and width must be (smp checks it and raises otherwise)."""
    if not getattr(model, "requires_divisible_input_shape", True):
        return 1
    return int(model.encoder.output_stride)


def check_divisor(spec: ModelSpec, model: nn.Module) -> None:
    """The entry pads to a multiple the encoder accepts (smp raises on other sizes at run time)."""
    needed = required_divisor(model)
    if spec.input.size_divisor % needed:
        raise EntryError(
            "input.size_divisor",
            f"model {spec.name!r}: {spec.architecture} with these arguments needs height and width "
            f"multiples of {needed}; the entry pads to multiples of {spec.input.size_divisor}",
        )


BUILDERS = {name: partial(build_smp, name.removeprefix("smp.")) for name in SMP_ARCHITECTURES}
