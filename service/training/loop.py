"""The training loop both trainers run (semantic and panoptic): one-cycle AdamW, resumable checkpoints,
validation every ``val_every`` steps, the weights and ``training.json`` at the end.

What differs between the tasks is a ``Task``: a step's losses (on that step's batch), how the model is
validated, and how initial weights are loaded. ``train_command`` is ``segserve train`` for either trainer.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from service.config import ModelSpec
from service.models.registry import build_model, save_weights
from service.training import checkpoint as checkpoints


class Report(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


class LoopConfig(Protocol):
    """The fields of a trainer's config the loop reads (each trainer's ``TrainConfig`` has more)."""

    steps: int
    lr: float
    weight_decay: float
    val_every: int
    checkpoint_every: int
    seed: int
    threads: int
    init_weights: str | None


@dataclass(frozen=True)
class Task:
    losses: Callable[[torch.nn.Module, int], dict[str, torch.Tensor]]
    """(model, step) -> named losses of that step's batch, their sum under "loss"."""
    validate: Callable[[torch.nn.Module], Report]
    summary: Callable[[Report], str]
    """One line on a validation report, for the progress log."""
    load_initial: Callable[[torch.nn.Module, Path], Any]


def train(
    spec: ModelSpec,
    task: Task,
    config: LoopConfig,
    weights_out: Path,
    checkpoint_dir: Path,
    stop_at: int | None = None,
) -> Report:
    """Train (resuming from ``checkpoint_dir/last.pt``), write the weights and ``training.json`` beside
    them; returns the final validation report. ``stop_at`` ends the run early at that step, keeping the
    learning-rate schedule of ``config.steps``: how a run cut short for time is reproduced exactly."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(spec)
    if config.init_weights:
        task.load_initial(model, Path(config.init_weights))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.15
    )
    checkpoint = checkpoint_dir / "last.pt"
    start, history = checkpoints.resume(checkpoint, config, model, optimizer, schedule)
    last = min(config.steps, stop_at or config.steps)
    bar = tqdm(range(start, last), initial=start, total=last, desc=f"train {spec.name}")
    started = time.monotonic()
    for step in bar:
        model.train()
        losses = task.losses(model, step)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
        done = step + 1
        if done % config.val_every == 0 or done == last:
            report = task.validate(model)
            values = {k: round(v.item(), 4) for k, v in losses.items()}
            history.append({"step": done, **values, **report.as_dict()})
            tqdm.write(f"step {done}: loss {losses['loss'].item():.4f} {task.summary(report)}")
        if done % config.checkpoint_every == 0 or done == last:
            checkpoints.save(checkpoint, done, config, model, optimizer, schedule, history)
    model.eval()
    metadata = {"model": spec.name, "steps": str(last), "schedule_steps": str(config.steps)}
    save_weights(model, weights_out, metadata)
    seconds = time.monotonic() - started
    summary = {"config": asdict(config), "history": history, "seconds": seconds}  # type: ignore[call-overload]
    (weights_out.parent / "training.json").write_text(json.dumps(summary, indent=1))
    return task.validate(model)


def train_command(args: argparse.Namespace, repo: Any, spec: ModelSpec, trainer: Any) -> int:
    """``segserve train`` with ``trainer`` (``service.training.semantic`` or ``.panoptic``): its
    ``TrainConfig`` from the command's options, the weights where the repository entry says."""
    config = trainer.TrainConfig(
        steps=args.steps or trainer.TrainConfig.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        init_weights=args.init_weights,
    )
    weights = repo.weights_path(spec)
    report = trainer.train(spec, weights, Path(args.checkpoints) / spec.name, config, stop_at=args.stop_at)
    print(json.dumps({"model": spec.name, "weights": str(weights), "validation": report.as_dict()}, indent=1))
    return 0
