"""Batched instance segmentation with torchvision's Mask R-CNN: the ``Runner`` with detections out.

How our input policy relates to Mask R-CNN's own transform (``GeneralizedRCNNTransform``): the model
is not called as ``model(list_of_images)``; its transform is bypassed and its parts are called
(``backbone`` -> ``rpn`` -> ``roi_heads``) on our batch. Why:
- the codec already resized (``input.mode: shortest_edge`` with ``size`` / ``max_size`` reproduces
  the transform's ``min_size`` / ``max_size`` sizes) and padded (``size_divisor``, 32 as torchvision
  pads) on the CPU, and ``to_model_input`` normalised with the entry's ``mean`` / ``std`` (0-1 scale,
  as the transform): a second resize would blur, and the transform would redo the batching our
  ``Runner.groups`` already did;
- the transform's post-processing pastes every mask over the whole *model input* image; we paste
  each mask at the client's *original* resolution, only inside its box (``paste_mask_crops``), the
  same arithmetic as torchvision's ``paste_masks_in_image`` without ``N x H x W`` floats.
The RPN and box heads get each image's unpadded size (``Geometry.scaled``), as the transform would
give them, so proposals and boxes are clipped to the image, not to its padding. Boxes are then scaled
to original pixel coordinates with torchvision's own ``resize_boxes``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import resize_boxes

from service.config import InstanceSpec, ModelSpec
from service.imaging.geometry import Geometry
from service.imaging.instance import Instances, instance_id_map, make_instances
from service.models.inference import GroupOutput, Runner
from service.types import PreparedImage


def instance_params(spec: ModelSpec) -> InstanceSpec:
    """The spec's instance settings (config validation checked them when it loaded)."""
    if spec.instance is None:
        raise ValueError(f"model {spec.name!r} is not an instance model (task {spec.task!r})")
    return spec.instance


def apply_thresholds(model: nn.Module, params: InstanceSpec) -> nn.Module:
    """Set the box head's score threshold, NMS IoU and detection cap from the entry (read per call)."""
    heads = model.roi_heads
    heads.score_thresh = params.score_threshold
    heads.nms_thresh = params.nms_threshold
    heads.detections_per_img = params.max_detections
    return model


def detect(
    model: nn.Module, images: ImageList, autocast: contextlib.AbstractContextManager | None = None
) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN without its transform: normalised padded batch -> per image ``boxes [N, 4]`` (at the
    size in ``images.image_sizes``), ``labels [N]``, ``scores [N]``, ``masks [N, 1, 28, 28]`` (soft).

    ``autocast`` (fp16/bf16) covers the backbone only, where the work is. The RPN and box heads run in
    fp32: torchvision's box decoding casts the proposals to the deltas' dtype, and fp16 has a step of
    1 px between 1024 and 2048, bf16 8 px, which would move boxes (and the masks pasted into them).
    """
    with autocast or contextlib.nullcontext():
        features = model.backbone(images.tensors)
    features = OrderedDict((name, f.float()) for name, f in features.items())
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    return detections


def paste_mask_crops(
    masks: torch.Tensor, boxes: torch.Tensor, threshold: float, height: int, width: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Soft masks ``[N, M, M]`` in their boxes ``[N, 4]`` (image pixels) -> thresholded crops.

    The arithmetic of torchvision's ``paste_masks_in_image`` (one pixel of padding around each mask,
    the box grown to match, rounded down to ints, the mask resized bilinearly to the box and clipped
    to the image), but each result stays the size of its box. Returns bool ``[h_k, w_k]`` crops
    (pixels with probability above ``threshold``) and their top-left ``(x0, y0)``, int64 ``[N, 2]``.
    """
    padded, scale = expand_masks(masks[:, None].float(), padding=1)
    corners = expand_boxes(boxes.float(), scale).to(torch.int64).tolist()
    crops, origins = [], []
    for mask, (x1, y1, x2, y2) in zip(padded, corners, strict=True):
        size = (max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))
        resized = F.interpolate(mask[None], size=size, mode="bilinear", align_corners=False)[0, 0]
        left, top = min(max(x1, 0), width), min(max(y1, 0), height)
        right, bottom = max(min(x2 + 1, width), left), max(min(y2 + 1, height), top)
        crops.append(resized[top - y1 : bottom - y1, left - x1 : right - x1] > threshold)
        origins.append((left, top))
    return _to_host(crops), np.asarray(origins, np.int64).reshape(-1, 2)


def _to_host(crops: list[torch.Tensor]) -> list[np.ndarray]:
    """Bool crops on the device -> numpy, in one copy (one device sync, not one per instance)."""
    if not crops:
        return []
    flat = torch.cat([c.reshape(-1) for c in crops]).cpu().numpy()
    sizes = np.cumsum([c.numel() for c in crops])[:-1]
    return [part.reshape(c.shape) for part, c in zip(np.split(flat, sizes), crops, strict=True)]


def instances_at_original(
    detection: dict[str, torch.Tensor], geometry: Geometry, mask_threshold: float
) -> Instances:
    """One image's detections at the model input's scale -> ``Instances`` at the original resolution."""
    height, width = geometry.original
    boxes = resize_boxes(detection["boxes"].float(), list(geometry.scaled), [height, width])
    crops, origins = paste_mask_crops(detection["masks"][:, 0], boxes, mask_threshold, height, width)
    return make_instances(
        height,
        width,
        detection["labels"].cpu().numpy(),
        detection["scores"].float().cpu().numpy(),
        boxes.cpu().numpy(),
        crops,
        origins,
    )


class InstanceRunner(Runner):
    """``Runner`` whose forward is Mask R-CNN's detector and whose results are ``Instances``.

    ``Segmentation.labels`` is the instance id map (0 = background, k = the k-th instance by score)
    and ``Segmentation.instances`` the detections themselves.
    """

    def __init__(self, spec: ModelSpec, model: nn.Module, device: torch.device | None = None) -> None:
        self.params = instance_params(spec)  # a semantic spec is refused before the model moves
        super().__init__(spec, apply_thresholds(model, self.params), device)

    def _to_device(self, items: list[PreparedImage]) -> ImageList:  # type: ignore[override]
        x = super()._to_device(items)
        if x.device.type == "cpu":
            # NCHW-contiguous, as torchvision's own transform hands images over: the same conv kernels
            # run, so the detections are exactly what ``model(images)`` gives (the NHWC view from
            # ``to_model_input`` picks other kernels, and boxes move by ~1e-3 px).
            x = x.contiguous()
        return ImageList(x, [tuple(item.geometry.scaled) for item in items])

    def forward(self, images: ImageList) -> list[dict[str, torch.Tensor]]:  # type: ignore[override]
        with torch.inference_mode():
            return detect(self.model, images, self._autocast())

    def postprocess(
        self, detections: list[dict[str, torch.Tensor]], items: list[PreparedImage]
    ) -> GroupOutput:
        labels, extras = [], []
        for detection, item in zip(detections, items, strict=True):
            instances = instances_at_original(detection, item.geometry, self.params.mask_threshold)
            labels.append(instance_id_map(instances))
            extras.append({"instances": instances})
        return GroupOutput(labels, extras)

    def warm_up(self) -> None:
        """One detection and one mask pasting at the input size (lazy kernels, first allocations)."""
        d = self.spec.input.size_divisor
        side = -(-self.spec.input.size // d) * d
        x = torch.zeros((1, 3, side, side), device=self.device)
        detections = self.forward(ImageList(x, [(side, side)]))
        instances_at_original(detections[0], Geometry(*[(side, side)] * 3), self.params.mask_threshold)
        self._sync()
