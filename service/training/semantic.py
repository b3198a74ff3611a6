"""Train and evaluate a semantic model on the synthetic shapes.

Training draws fresh samples every step (the generator is seeded by step), so it never repeats an
image and never sees the held-out seeds. A checkpoint is written every ``checkpoint_every`` steps
and a restarted run resumes from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from service.config import ModelSpec
from service.imaging.geometry import fit_to_policy, pad_value, restore_labels
from service.models.registry import build_model, load_weights, normalize, save_weights, select_output
from service.training import checkpoint as checkpoints
from service.training.metrics import IGNORE_INDEX, DatasetIoU, IoUReport
from service.training.shapes import DEFAULT_SIZES, ShapesConfig, make_batch, make_sample

TRAIN_SEED_BASE = 1_000_000
VALIDATION_SEEDS = range(100_000, 100_064)
HELD_OUT_SEED_BASE = 900_000_000
# Held-out images come in sizes the training never used, so they pass through resizing and padding.
HELD_OUT_SIZES = ((128, 128), (96, 128), (192, 256), (256, 192), (240, 320), (100, 150), (300, 300))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    val_every: int = 250
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 0
    """torch threads for training; 0 = torch's default."""
    init_weights: str | None = None
    """safetensors of this same model to start from (a second training stage, e.g. a second one-cycle
    schedule after the first one ended); None: random initialisation."""


def dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Soft Dice over classes (mean), ignoring IGNORE_INDEX pixels: balances small classes."""
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + 1) / (total + 1)).mean()


def training_batch(step: int, config: TrainConfig, spec: ModelSpec, shapes: ShapesConfig):
    """Images [B,H,W,3] uint8 and labels [B,H,W] int64 for one step, all of one size.

    Every third step the images are narrower than the size divisor allows and get padded as the
    codec would pad them, labels marked IGNORE_INDEX, so the network learns to ignore padding. Sizes
    that are not a multiple of the divisor (32 for smp encoders) are padded up the same way.
    """
    rng = np.random.default_rng([config.seed, step])
    h, w = DEFAULT_SIZES[rng.integers(len(DEFAULT_SIZES))]
    d = spec.input.size_divisor
    cut = int(rng.integers(1, d)) if step % 3 == 0 else 0
    seeds = range(
        TRAIN_SEED_BASE + step * config.batch_size, TRAIN_SEED_BASE + (step + 1) * config.batch_size
    )
    images, labels, _ = make_batch(seeds, (h, w - cut), shapes)
    padded = (-(-h // d) * d, -(-w // d) * d)
    if padded != images.shape[1:3]:
        out = np.empty((len(seeds), *padded, 3), np.uint8)
        out[...] = pad_value(spec.input)
        out[:, :h, : w - cut] = images
        target = np.full((len(seeds), *padded), IGNORE_INDEX, np.uint8)
        target[:, :h, : w - cut] = labels
        images, labels = out, target
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def predict_labels(model: torch.nn.Module, image: np.ndarray, spec: ModelSpec) -> torch.Tensor:
    """The serving path without Ray: fit to the input policy, forward, argmax at original size."""
    fitted, geometry = fit_to_policy(image, spec.input)
    # torch.tensor copies: ``fitted`` may be a read-only view of a resized PIL image.
    x = normalize(torch.tensor(fitted)[None], spec.input)
    with torch.inference_mode():
        logits = select_output(model(x), spec.output)[0]
    return restore_labels(logits, geometry)


def evaluate(
    model: torch.nn.Module, spec: ModelSpec, seeds, sizes=HELD_OUT_SIZES, progress=False
) -> IoUReport:
    """mIoU and per-class IoU on shapes samples of the given seeds, cycling through ``sizes``."""
    model.eval()
    metric = DatasetIoU([c.name for c in spec.classes])
    for i, seed in enumerate(tqdm(seeds, desc="evaluate", disable=not progress)):
        sample = make_sample(seed, sizes[i % len(sizes)])
        metric.update(predict_labels(model, sample.image, spec), torch.from_numpy(sample.semantic))
    return metric.compute()


def held_out_seeds(count: int) -> range:
    return range(HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + count)


def train(
    spec: ModelSpec, weights_out: Path, checkpoint_dir: Path, config: TrainConfig, stop_at: int | None = None
) -> IoUReport:
    """Train (resuming from ``checkpoint_dir``) and write the weights.

    ``stop_at`` ends the run early at that step, keeping the learning-rate schedule of
    ``config.steps``: how a run cut short for time is reproduced exactly.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(spec)
    if config.init_weights:
        load_weights(model, Path(config.init_weights))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.15
    )
    checkpoint = checkpoint_dir / "last.pt"
    start, history = checkpoints.resume(checkpoint, config, model, optimizer, schedule)
    shapes = ShapesConfig()
    last = min(config.steps, stop_at or config.steps)
    bar = tqdm(range(start, last), initial=start, total=last, desc=f"train {spec.name}")
    started = time.monotonic()
    for step in bar:
        model.train()
        images, labels = training_batch(step, config, spec, shapes)
        logits = select_output(model(normalize(images, spec.input)), spec.output)
        ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        loss = ce + config.dice_weight * dice_loss(logits, labels, spec.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", ce=f"{ce.item():.3f}")
        done = step + 1
        if done % config.val_every == 0 or done == last:
            report = evaluate(model, spec, VALIDATION_SEEDS)
            history.append({"step": done, "loss": round(loss.item(), 4), **report.as_dict()})
            tqdm.write(f"step {done}: loss {loss.item():.4f} val mIoU {report.miou:.4f} {report.per_class}")
        if done % config.checkpoint_every == 0 or done == last:
            checkpoints.save(checkpoint, done, config, model, optimizer, schedule, history)
    model.eval()
    save_weights(
        model,
        weights_out,
        metadata={"model": spec.name, "steps": str(last), "schedule_steps": str(config.steps)},
    )
    (weights_out.parent / "training.json").write_text(
        json.dumps(
            {"config": asdict(config), "history": history, "seconds": time.monotonic() - started}, indent=1
        )
    )
    return evaluate(model, spec, VALIDATION_SEEDS)
