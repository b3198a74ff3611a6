"""Build a network from its repository entry and load its weights (safetensors only).

Weights are never unpickled: ``load_weights`` refuses anything that is not a safetensors file, so
a weights file cannot run code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from service.config import ModelSpec
from service.models.null import build_null
from service.models.unet import build_unet

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "null": build_null,
}


# Builders in modules imported on first use, so only replicas serving such a model import their
# libraries (torchvision's detection package): architecture -> module; the module's ``BUILDERS``
# table is registered when an entry names one of its architectures.
LAZY_BUILDERS: dict[str, str] = {
    "torchvision.maskrcnn_resnet50_fpn": "service.models.maskrcnn",
    "torchvision.maskrcnn_resnet50_fpn_v2": "service.models.maskrcnn",
}


def _register_lazy(architecture: str) -> None:
    module = LAZY_BUILDERS.get(architecture)
    if module is not None and architecture not in BUILDERS:
        for name, builder in importlib.import_module(module).BUILDERS.items():
            if name not in BUILDERS:
                register_builder(name, builder)


def register_builder(architecture: str, builder: Callable[..., nn.Module]) -> None:
    if architecture in BUILDERS:
        raise ValueError(f"architecture {architecture!r} is already registered")
    BUILDERS[architecture] = builder


def build_model(spec: ModelSpec) -> nn.Module:
    """The network for ``spec`` with random weights (``num_classes`` comes from the class list)."""
    if spec.architecture == "panoptic_unet" and "panoptic_unet" not in BUILDERS:
        from service.models.panoptic import build_panoptic_unet

        BUILDERS["panoptic_unet"] = build_panoptic_unet
    _register_lazy(spec.architecture)
    try:
        builder = BUILDERS[spec.architecture]
    except KeyError:
        raise ValueError(
            f"model {spec.name!r}: unknown architecture {spec.architecture!r}; "
            f"available: {', '.join(sorted(BUILDERS))}"
        ) from None
    try:
        return builder(num_classes=spec.num_classes, **spec.arguments)
    except TypeError as e:
        raise ValueError(f"model {spec.name!r}: bad architecture arguments {spec.arguments}: {e}") from None


class WeightsError(ValueError):
    """Weights are missing, not safetensors, or do not fit the architecture."""


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` strictly (every key must match)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors weights are loaded (never pickle files)")
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit the architecture: {e}") from None
    return model


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_model(spec: ModelSpec, weights: Path | None) -> nn.Module:
    """Build and (unless the null model) load weights; returned in eval mode on the CPU."""
    model = build_model(spec)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def to_model_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [B, H, W, 3] (any device) -> normalized float [B, 3, H, W] on the same device."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
