"""Segmentation quality metrics over a dataset (torchmetrics where it fits)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import MulticlassJaccardIndex

IGNORE_INDEX = 255


@dataclass(frozen=True)
class IoUReport:
    miou: float
    per_class: dict[str, float]
    images: int

    def as_dict(self) -> dict:
        return {"miou": self.miou, "per_class_iou": self.per_class, "images": self.images}


class DatasetIoU:
    """Dataset-level IoU (intersections and unions summed over all images, then per class).

    torchmetrics' ``MulticlassJaccardIndex`` accumulates the confusion matrix, supports an ignore
    index and macro averaging; ``segmentation.MeanIoU`` averages per image and has no ignore index,
    which is not the usual dataset mIoU.
    """

    def __init__(self, class_names: list[str] | tuple[str, ...]) -> None:
        self.names = list(class_names)
        self.metric = MulticlassJaccardIndex(
            num_classes=len(self.names), average="none", ignore_index=IGNORE_INDEX
        )
        self.images = 0

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(predicted.long().flatten(), target.long().flatten())
        self.images += 1 if predicted.dim() == 2 else predicted.shape[0]

    def compute(self) -> IoUReport:
        per_class = self.metric.compute()
        return IoUReport(
            miou=float(per_class.mean()),
            per_class={n: round(float(v), 4) for n, v in zip(self.names, per_class, strict=True)},
            images=self.images,
        )
