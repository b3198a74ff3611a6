"""Repository entries with random weights: realistic models at realistic sizes for the benchmark and
the tests, written like a user's own (a safetensors state dict beside a ``repository.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from service.config import ModelSpec
from service.models.registry import build_model, save_weights

VOC_CLASSES = 21  # the torchvision segmentation models' own class count (Pascal VOC)


def palette_classes(count: int) -> list[dict[str, Any]]:
    """``count`` classes named class-<i> with distinct colours."""
    return [
        {
            "id": i,
            "name": "background" if i == 0 else f"class-{i}",
            "color": [(i * 67) % 256, (i * 131) % 256, (i * 199) % 256],
        }
        for i in range(count)
    ]


def random_entry(
    folder: Path,
    name: str,
    architecture: str,
    arguments: dict[str, Any] | None = None,
    classes: int = 4,
    seed: int = 0,
    **sections: Any,
) -> dict[str, Any]:
    """Build ``architecture`` with random weights (seeded), write ``<folder>/<name>/model.safetensors``;
    the entry (a dict for ``repository.yaml``) with ``sections`` (input, output, batching...) as given."""
    entry = {
        "name": name,
        "task": "semantic",
        "architecture": architecture,
        "arguments": arguments or {},
        "weights": f"{name}/model.safetensors",
        "classes": palette_classes(classes),
        **sections,
    }
    torch.manual_seed(seed)
    model = build_model(ModelSpec.model_validate(entry))
    save_weights(model, Path(folder) / name / "model.safetensors", metadata={"model": name, "random": "true"})
    return entry


def write_repository(folder: Path, entries: list[dict[str, Any]]) -> Path:
    path = Path(folder) / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": entries}, sort_keys=False))
    return path


BENCH_MODEL = "deeplabv3-mobilenet-512"


def write_bench_repository(folder: Path, size: int = 512, **sections: Any) -> Path:
    """A repository with one realistic model for ``make bench``: torchvision DeepLabV3-MobileNetV3-Large,
    21 classes, random weights, letterboxed to ``size`` (512). Returns the ``repository.yaml`` path."""
    entry = random_entry(
        folder,
        BENCH_MODEL,
        "torchvision.deeplabv3_mobilenet_v3_large",
        classes=VOC_CLASSES,
        input={"mode": "letterbox", "size": size, "size_divisor": 16},
        output={"key": "out"},
        **sections,
    )
    return write_repository(folder, [entry])
