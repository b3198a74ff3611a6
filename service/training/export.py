"""Export a trained network for serving without its Python code: ONNX, or a ``torch.export`` program.

Both keep the batch, height and width dynamic, so the served model still batches and takes any size
its input policy gives. The network is wrapped so the exported graph returns the class scores alone
(``key``: the dict entry holding them, e.g. torchvision's ``out``; the ``aux`` head is dropped).
What docs/models.md shows, as functions the tests and the demo model use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Scores(nn.Module):
    """The network with its output reduced to the scores tensor ``[N, C, H, W]``."""

    def __init__(self, model: nn.Module, key: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[self.key] if self.key is not None else out


def _dynamic(max_batch: int) -> dict[str, dict[int, object]]:
    # Height and width are DYNAMIC (not a named Dim): a network that needs multiples of 32 gets that
    # relation recorded instead of an export error.
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return {"x": {0: batch, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}}


def example_input(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def export_program(
    model: nn.Module, path: Path, size: int, key: str | None = None, max_batch: int = 1024
) -> torch.export.ExportedProgram:
    """``torch.export`` the network (in eval mode, on the CPU) with dynamic batch and size; save a .pt2."""
    program = torch.export.export(
        Scores(model, key).eval(), (example_input(size),), dynamic_shapes=_dynamic(max_batch)
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path)
    return program


def export_onnx(
    model: nn.Module, path: Path, size: int, key: str | None = None, max_batch: int = 1024
) -> None:
    """ONNX (torch's dynamo exporter) with dynamic batch and size, one self-contained file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Scores(model, key).eval(),
        (example_input(size),),
        str(path),
        input_names=["image"],
        output_names=["scores"],
        dynamic_shapes=_dynamic(max_batch),
        external_data=False,
        dynamo=True,
        verbose=False,
    )
