"""Build a network from its repository entry and load its weights; the entry's input and output conventions.

Weights are never unpickled: ``load_weights`` refuses anything that is not a safetensors file, so a
weights file cannot run code. Exported artefacts (``format: torch_export | onnx``) load through their
own runtime modules (``exported.py``, ``onnx_runtime.py``), imported only by replicas that serve one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from service.config import InputPolicy, ModelSpec, OutputSpec
from service.models.null import build_null
from service.models.unet import build_unet

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "null": build_null,
}

# Builders in modules imported on first use, so only replicas serving such a model import their
# libraries: the module of an architecture by its exact name (Mask R-CNN: torchvision's detection
# package), else by its family's prefix; that module's ``BUILDERS`` table is registered when an entry
# names one of its architectures.
LAZY_BUILDERS: dict[str, str] = {
    "torchvision.maskrcnn_resnet50_fpn": "service.models.maskrcnn",
    "torchvision.maskrcnn_resnet50_fpn_v2": "service.models.maskrcnn",
}
LAZY_FAMILIES: dict[str, str] = {
    "torchvision.": "service.models.torchvision_segmentation",
    "smp.": "service.models.smp",
}


class EntryError(ValueError):
    """A repository entry cannot be served; ``key`` names the entry's key that is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # survives pickling across Ray actor boundaries
        return (type(self), (self.key, str(self)))


class WeightsError(EntryError):
    """Weights are missing, not safetensors, corrupt, or do not fit the architecture."""

    def __init__(self, message: str, key: str = "weights") -> None:
        super().__init__(key, message)

    def __reduce__(self):
        return (type(self), (str(self), self.key))


def _lazy_module(architecture: str) -> str | None:
    if architecture in LAZY_BUILDERS:
        return LAZY_BUILDERS[architecture]
    return next((m for prefix, m in LAZY_FAMILIES.items() if architecture.startswith(prefix)), None)


def _register_lazy(architecture: str) -> None:
    module = _lazy_module(architecture)
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
    if spec.architecture is None:
        raise EntryError("format", f"model {spec.name!r}: format {spec.format} is loaded, not built")
    if spec.architecture == "panoptic_unet" and "panoptic_unet" not in BUILDERS:
        from service.models.panoptic import build_panoptic_unet

        BUILDERS["panoptic_unet"] = build_panoptic_unet
    _register_lazy(spec.architecture)
    try:
        builder = BUILDERS[spec.architecture]
    except KeyError:
        raise EntryError(
            "architecture",
            f"model {spec.name!r}: unknown architecture {spec.architecture!r}; "
            f"available: {', '.join(sorted(BUILDERS))}",
        ) from None
    try:
        return builder(num_classes=spec.num_classes, **spec.arguments)
    except (TypeError, ValueError, KeyError) as e:
        # smp reports an unknown encoder as KeyError/ValueError, a bad keyword as TypeError.
        raise EntryError(
            "arguments", f"model {spec.name!r}: bad arguments {spec.arguments} for {spec.architecture}: {e}"
        ) from None


# What a pickle looks like from its first bytes: torch.save's zip archive, or a raw pickle stream.
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def refuse_pickle(path: Path) -> None:
    """A pickle (or torch.save) file is refused by its content, whatever its name, and never loaded."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(PICKLE_MAGIC):
        raise WeightsError(
            f"{path}: this is a pickle / torch.save file: refused, never loaded (unpickling can run code); "
            "save the state dict with safetensors.torch.save_file (docs/models.md)"
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with a clear error for a missing, pickled or corrupt file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors weights are loaded (never pickle files)")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    refuse_pickle(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a valid safetensors file (corrupt or truncated?): {e}") from None


def first_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``found`` does not fit ``expected``, naming the first tensor that does not (None: it fits)."""
    unexpected = sorted(k for k in found if k not in expected)  # sorted: the file's order is not kept
    for name, tensor in expected.items():
        if name not in found:
            extra = unexpected[0] if unexpected else None
            hint = f"; the file has {extra!r} instead" if extra else ""
            return f"the file has no tensor {name!r}{hint} (weights of another architecture?)"
        if tuple(found[name].shape) != tuple(tensor.shape):
            return (
                f"tensor {name!r} has shape {tuple(found[name].shape)} in the file, the architecture "
                f"wants {tuple(tensor.shape)} (another architecture, arguments or class count?)"
            )
    if unexpected:
        return f"the file has tensor {unexpected[0]!r}, which the architecture does not have"
    return None


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a safetensors state dict into ``model`` strictly (every name and shape must match)."""
    state = read_state_dict(path)
    for name in _dropped_on_load(model):
        state.pop(name, None)
    problem = first_mismatch(model.state_dict(), state)
    if problem is not None:
        raise WeightsError(f"{path}: weights do not fit the architecture: {problem}")
    model.load_state_dict(state, strict=True)
    return model


def _dropped_on_load(model: nn.Module) -> list[str]:
    """Names torch itself drops when loading: ``FrozenBatchNorm2d`` ignores a ``num_batches_tracked``,
    so a body trained with ``BatchNorm2d`` loads into a frozen one (torchvision's Mask R-CNN v1)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    return [
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, module in model.named_modules()
        if isinstance(module, FrozenBatchNorm2d)
    ]


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_model(spec: ModelSpec, weights: Path | None) -> nn.Module:
    """The entry's network on the CPU in eval mode: built and loaded (pytorch), or its runtime's module."""
    if spec.format == "torch_export":
        from service.models.exported import load_program

        return load_program(_required(spec, weights)).eval()
    if spec.format == "onnx":
        from service.models.onnx_runtime import OnnxModule

        return OnnxModule(_required(spec, weights), spec).eval()
    model = build_model(spec)
    if spec.architecture is not None and spec.architecture.startswith("smp."):
        from service.models.smp import check_divisor

        check_divisor(spec, model)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _required(spec: ModelSpec, weights: Path | None) -> Path:
    if weights is None:
        raise WeightsError(f"model {spec.name!r}: format {spec.format} needs its file")
    return weights


def to_model_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [B, H, W, 3] (any device) -> normalized float [B, 3, H, W] on the same device (RGB, 0-1)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def normalize(images: torch.Tensor, policy: InputPolicy) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> what the network expects [B, 3, H, W]: channel order, range, mean/std."""
    if policy.channels == "BGR":
        images = images.flip(-1)
    if policy.pixel_range == "0-1":
        return to_model_input(images, policy.mean, policy.std)
    x = images.permute(0, 3, 1, 2).float()
    m = torch.tensor(policy.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(policy.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def select_output(output: torch.Tensor | Mapping | tuple | list, spec: OutputSpec) -> torch.Tensor:
    """The class scores [N, C, H, W] out of what the network returned, as the entry declares it."""
    if spec.key is not None:
        if not isinstance(output, Mapping):
            raise EntryError(
                "output.key", f"output.key is {spec.key!r} but the network returns {_kind(output)}"
            )
        if spec.key not in output:
            raise EntryError("output.key", f"the network's outputs are {sorted(output)}, not {spec.key!r}")
        output = output[spec.key]
    if not isinstance(output, torch.Tensor):
        raise EntryError(
            "output.key", f"the network returns {_kind(output)}: set output.key to pick the scores"
        )
    if output.dim() != 4:
        raise EntryError("output", f"scores must be [N, C, H, W], the network returns {tuple(output.shape)}")
    return output


def _kind(output: object) -> str:
    if isinstance(output, Mapping):
        return f"a dict with keys {sorted(output)}"
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"
