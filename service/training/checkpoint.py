"""Resumable training checkpoints, shared by the semantic and the panoptic trainers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch


def resume(checkpoint: Path, config: Any, model, optimizer, schedule) -> tuple[int, list[dict]]:
    """Load ``checkpoint`` into the model, optimizer and schedule: (step to continue from, history).
    (0, []) when there is none; refuses one written with another configuration."""
    if not checkpoint.exists():
        return 0, []
    # weights_only=True: the checkpoint is a dict of tensors and numbers, never arbitrary pickle.
    state = torch.load(checkpoint, weights_only=True)
    if state["config"] != asdict(config):
        raise SystemExit(f"{checkpoint} was written with another configuration; delete it to restart")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    print(f"resuming from step {state['step']}")
    return state["step"], json.loads(state["history"])


def save(checkpoint: Path, step: int, config: Any, model, optimizer, schedule, history: list[dict]) -> None:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "step": step,
        "config": asdict(config),
        "history": json.dumps(history),
    }
    torch.save(state, checkpoint.with_suffix(".tmp"))
    checkpoint.with_suffix(".tmp").replace(checkpoint)  # atomic: a kill never leaves half a checkpoint
