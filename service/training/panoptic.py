"""Train and evaluate a panoptic model (Panoptic-DeepLab targets and losses) on the synthetic shapes.

Mirrors ``service.training.semantic``: fresh samples every step (seeded by step, never the held-out
seeds), a resumable checkpoint every ``checkpoint_every`` steps, validation every ``val_every`` steps.
Here the samples have striped "stuff" regions and more touching shapes (``PANOPTIC_SHAPES``) so that
same-class instances that touch or overlap are common, and validation reports PQ.

Classes: 0 background (stuff), 1 circle, 2 rectangle, 3 triangle (things), 4 stripes (stuff).

Run: ``segserve train --model panoptic-shapes`` and
``segserve evaluate --model panoptic-shapes --images 200`` (``service/cli.py`` sends panoptic models here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from service.config import ModelSpec, Repository
from service.imaging.geometry import fit_to_policy, pad_value
from service.models.panoptic_inference import PanopticRunner
from service.models.registry import to_model_input
from service.training import loop
from service.training.metrics import IGNORE_INDEX
from service.training.pq import (
    PQReport,
    pq_compute_folders,
    write_annotation,
    write_coco_panoptic,
    write_panoptic_json,
)
from service.training.semantic import (
    HELD_OUT_SIZES,
    TRAIN_SEED_BASE,
    VALIDATION_SEEDS,
    dice_loss,
    held_out_seeds,
)
from service.training.shapes import DEFAULT_SIZES, Sample, ShapesConfig, make_sample
from service.types import PreparedImage, SegmentOptions

PANOPTIC_SHAPES = ShapesConfig(stripes=True, touch_prob=0.6)
# detectron2 uses sigma 8 on 1024x2048 Cityscapes crops, where instances span hundreds of pixels. Our
# images are ~128 px and touching shapes have centres >= ~16 px apart: sigma 4 keeps neighbouring
# peaks apart (at 16 px a neighbour's Gaussian is down to exp(-8)) and still gives the 7x7 NMS a peak
# a few pixels wide.
CENTER_SIGMA = 4.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    center_weight: float = 200.0
    """Panoptic-DeepLab's MSE x 200 on the centre heatmap."""
    offset_weight: float = 0.2
    """L1 on offsets in pixels: Panoptic-DeepLab's 0.01 is for Cityscapes objects ~10x larger than ours,
    and a larger weight makes the offsets converge within the few thousand steps a CPU affords."""
    val_every: int = 250
    val_images: int = 48
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 0
    """torch threads for training; 0 = torch's default."""
    init_weights: str | None = None
    """safetensors to start from instead of random weights: a semantic U-Net of the same depth and
    width gives the trunk (as Panoptic-DeepLab starts from a pretrained backbone; the heads stay
    random), a panoptic model gives everything (a second training stage)."""


def panoptic_targets(instances: np.ndarray, sigma: float = CENTER_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Centre heatmap float32 ``[H, W]`` and offsets float32 ``[2, H, W]`` from instance ids ``[H, W]``.

    As detectron2's ``PanopticDeepLabTargetGenerator``: each visible instance's centre is the mean of
    its pixel coordinates; the heatmap is the pixel-wise max of unit-peak Gaussians at the centres;
    offsets ``(cy - y, cx - x)`` on the instance's pixels, 0 elsewhere (weighted out of the loss).
    """
    h, w = instances.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    flat = instances.reshape(-1)
    count = int(flat.max()) + 1
    area = np.bincount(flat, minlength=count).astype(np.float32)
    cy = np.bincount(flat, weights=yy.reshape(-1), minlength=count) / np.maximum(area, 1)
    cx = np.bincount(flat, weights=xx.reshape(-1), minlength=count) / np.maximum(area, 1)
    present = np.flatnonzero(area[1:]) + 1
    heatmap = np.zeros((h, w), np.float32)
    for i in present:  # a handful of instances per image: the loop is over instances, not pixels
        heatmap = np.maximum(heatmap, np.exp(-((yy - cy[i]) ** 2 + (xx - cx[i]) ** 2) / (2 * sigma**2)))
    thing = instances > 0
    offsets = np.zeros((2, h, w), np.float32)
    offsets[0][thing] = (cy[instances] - yy)[thing]
    offsets[1][thing] = (cx[instances] - xx)[thing]
    return heatmap.astype(np.float32), offsets


def training_batch(step: int, config: TrainConfig, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """One step's batch, all of one size: images uint8 ``[B, H, W, 3]``, semantic int64 ``[B, H, W]``,
    center ``[B, 1, H, W]``, offset ``[B, 2, H, W]``, center_weight / offset_weight ``[B, 1, H, W]``.

    Every third step the images are narrower than the size divisor allows and padded as the codec pads
    them: padding is IGNORE_INDEX for the semantic loss and has weight 0 for centres and offsets.
    """
    rng = np.random.default_rng([config.seed, step])
    h, w = DEFAULT_SIZES[rng.integers(len(DEFAULT_SIZES))]
    cut = int(rng.integers(1, spec.input.size_divisor)) if step % 3 == 0 else 0
    first = TRAIN_SEED_BASE + step * config.batch_size
    samples = [make_sample(s, (h, w - cut), PANOPTIC_SHAPES) for s in range(first, first + config.batch_size)]
    targets = [panoptic_targets(s.instances) for s in samples]
    images = np.full((len(samples), h, w, 3), pad_value(spec.input), np.uint8)
    semantic = np.full((len(samples), h, w), IGNORE_INDEX, np.int64)
    center = np.zeros((len(samples), 1, h, w), np.float32)
    offset = np.zeros((len(samples), 2, h, w), np.float32)
    center_weight = np.zeros((len(samples), 1, h, w), np.float32)
    offset_weight = np.zeros((len(samples), 1, h, w), np.float32)
    for i, (s, (heatmap, offsets)) in enumerate(zip(samples, targets, strict=True)):
        images[i, :, : w - cut] = s.image
        semantic[i, :, : w - cut] = s.semantic
        center[i, 0, :, : w - cut] = heatmap
        offset[i, :, :, : w - cut] = offsets
        center_weight[i, 0, :, : w - cut] = 1.0
        offset_weight[i, 0, :, : w - cut] = s.instances > 0
    arrays = {
        "images": images,
        "semantic": semantic,
        "center": center,
        "offset": offset,
        "center_weight": center_weight,
        "offset_weight": offset_weight,
    }
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def panoptic_losses(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], config: TrainConfig, num_classes: int
) -> dict[str, torch.Tensor]:
    """Semantic CE + Dice, centre MSE, offset L1 (weighted means over their weight maps), and the total."""
    semantic = F.cross_entropy(outputs["semantic"], batch["semantic"], ignore_index=IGNORE_INDEX)
    dice = dice_loss(outputs["semantic"], batch["semantic"], num_classes)
    cw, ow = batch["center_weight"], batch["offset_weight"]
    center = ((outputs["center"] - batch["center"]).square() * cw).sum() / cw.sum().clamp(min=1)
    offset = ((outputs["offset"] - batch["offset"]).abs() * ow).sum() / ow.sum().clamp(min=1)
    total = (
        semantic + config.dice_weight * dice + config.center_weight * center + config.offset_weight * offset
    )
    return {"loss": total, "ce": semantic, "dice": dice, "center": center, "offset": offset}


def categories(spec: ModelSpec) -> list[dict]:
    """COCO categories of a spec's classes."""
    return [{"id": c.id, "name": c.name, "isthing": int(c.isthing)} for c in spec.classes]


def evaluate_pq(
    model: torch.nn.Module,
    spec: ModelSpec,
    seeds: Sequence[int],
    sizes: Sequence[tuple[int, int]] = HELD_OUT_SIZES,
    out: Path | None = None,
    progress: bool = False,
) -> PQReport:
    """PQ on shapes samples of ``seeds`` (sizes cycling through ``sizes``), through the COCO files.

    Writes the ground truth (``out/gt``) and the predictions (``out/pred``) in COCO panoptic format,
    predicting as the service does (``fit_to_policy``, then ``PanopticRunner``: batched forward,
    post-processing at the original size), and computes PQ from the files. ``out=None`` uses a
    temporary folder.
    """
    samples = [make_sample(s, sizes[i % len(sizes)], PANOPTIC_SHAPES) for i, s in enumerate(seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        gt_json = write_coco_panoptic(zip(seeds, samples, strict=True), folder / "gt", categories(spec))
        predictions = predict_annotations(model, spec, seeds, samples, folder / "pred" / "panoptic", progress)
        pred_json = write_panoptic_json(folder / "pred" / "panoptic.json", predictions, categories(spec))
        return pq_compute_folders(
            gt_json, folder / "gt" / "panoptic", pred_json, folder / "pred" / "panoptic"
        )


def predict_annotations(
    model: torch.nn.Module,
    spec: ModelSpec,
    seeds: Sequence[int],
    samples: Sequence[Sample],
    folder: Path,
    progress: bool = False,
    batch_size: int = 16,
) -> list[dict]:
    """Segment the samples' images as the service does; one id PNG per image in ``folder``, and the
    COCO annotations (image id = seed) returned."""
    model.eval()
    runner = PanopticRunner(spec, model, device=next(model.parameters()).device)
    options = SegmentOptions(model=spec.name)
    annotations = []
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluate", disable=not progress):
        chunk = samples[start : start + batch_size]
        items = [PreparedImage(*fit_to_policy(s.image, spec.input), options) for s in chunk]
        results = runner.run(items, [time.perf_counter()] * len(items))
        for seed, result in zip(seeds[start : start + batch_size], results, strict=True):
            annotations.append(write_annotation(folder, seed, result.panoptic, result.segments))
    return annotations


def train(
    spec: ModelSpec, weights_out: Path, checkpoint_dir: Path, config: TrainConfig, stop_at: int | None = None
) -> PQReport:
    """Train from scratch or resume ``checkpoint_dir/last.pt``; writes the weights and training.json
    (``service.training.loop``)."""
    validation = list(VALIDATION_SEEDS)[: config.val_images]

    def losses(model: torch.nn.Module, step: int) -> dict[str, torch.Tensor]:
        batch = training_batch(step, config, spec)
        outputs = model(to_model_input(batch["images"], spec.input.mean, spec.input.std))
        return panoptic_losses(outputs, batch, config, spec.num_classes)

    task = loop.Task(
        losses=losses,
        validate=lambda model: evaluate_pq(model, spec, validation),
        summary=lambda r: f"val PQ {r.pq:.4f} things {r.things.pq:.4f} stuff {r.stuff.pq:.4f}",
        load_initial=load_initial_weights,
    )
    return loop.train(spec, task, config, weights_out, checkpoint_dir, stop_at)


def load_initial_weights(model: torch.nn.Module, weights: Path) -> list[str]:
    """Copy the tensors of ``weights`` that ``model`` has with the same name and shape; the trunk must
    be complete (a semantic U-Net's head is left out, a panoptic model's heads come along).
    Returns the names of the model's tensors left at their random initialisation."""
    own = model.state_dict()
    found = {k: v for k, v in load_file(str(weights)).items() if k in own and own[k].shape == v.shape}
    if any(k.startswith("trunk.") and k not in found for k in own):
        raise ValueError(f"{weights}: trunk tensors do not match the model (check depth and base_width)")
    model.load_state_dict(found, strict=False)
    return sorted(set(own) - set(found))


# --- ``segserve evaluate`` for panoptic models (service/cli.py) -------------------------------------


def evaluate_command(args: argparse.Namespace, repo: Repository, spec: ModelSpec) -> int:
    from service.models.registry import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(spec, repo.weights_path(spec))
    out = Path(args.out) if args.out else None
    report = evaluate_pq(model, spec, held_out_seeds(args.images), out=out, progress=True)
    print(json.dumps({"model": spec.name, "held_out": report.as_dict()}, indent=1))
    return 0
