"""The benchmark's temporary model repository: the chosen models plus a ``null`` model.

The app takes one repository file, and weights may not leave its folder (``Repository.weights_path``),
so the temporary repository (under the gitignored ``loadtests/results/tmp/``) gets hard links to
(or copies of) the chosen models' weights, plus a ``null`` model: architecture null (a 1x1 conv),
no weights, the classes, input policy, batching and deployment of the first semantic model. The
null model runs the same pipeline with near-zero compute: its numbers are the serving overhead.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

NULL_MODEL = "null"


def null_entry(
    reference: dict[str, Any], name: str = NULL_MODEL, device_ms_per_image: float = 0.0
) -> dict[str, Any]:
    """A null model with the reference model's classes, input policy, batching and deployment;
    ``device_ms_per_image`` > 0 makes its forward wait that long per image (an accelerator's time)."""
    entry: dict[str, Any] = {
        "name": name,
        "task": "semantic",
        "architecture": "null",
        "weights": None,
        "description": "Benchmark null model: a 1x1 conv, near-zero compute, same pipeline.",
        "classes": [
            {k: copy.deepcopy(v) for k, v in c.items() if k != "isthing"} for c in reference["classes"]
        ],
    }
    if device_ms_per_image:
        entry["arguments"] = {"device_ms_per_image": device_ms_per_image}
        entry["description"] = f"Benchmark null model: waits {device_ms_per_image:g} ms per image."
    for key in ("input", "batching", "deployment"):
        if key in reference:
            entry[key] = copy.deepcopy(reference[key])
    return entry


def _link_weights(source: Path, entry: dict[str, Any], folder: Path) -> None:
    src = (source.parent / entry["weights"]).resolve()
    dst = folder / entry["weights"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_repository(
    source: Path, models: list[str], with_null: bool, folder: Path, gpus_per_replica: float | None = None
) -> tuple[Path, str | None]:
    """``folder/repository.yaml`` with ``models`` from ``source`` (weights hard-linked or copied under
    ``folder``, since weights may not leave the repository root) plus a null model; with
    ``gpus_per_replica``, every model's replicas ask for that many GPUs (a GPU run)."""
    raw_yaml = yaml.safe_load(source.read_text())
    entries = {e["name"]: e for e in raw_yaml["models"]}
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [copy.deepcopy(entries[name]) for name in models]
    for entry in chosen:
        if entry.get("weights"):
            _link_weights(source, entry, folder)
    null_name = None
    if with_null:
        semantic = [entries[m] for m in models if entries[m].get("task") == "semantic"]
        reference = (
            semantic[0] if semantic else next(e for e in raw_yaml["models"] if e["task"] == "semantic")
        )
        null_name = NULL_MODEL if NULL_MODEL not in entries else f"{NULL_MODEL}-bench"
        chosen.append(null_entry(reference, null_name))
    if gpus_per_replica is not None:
        for entry in chosen:
            entry["deployment"] = {**entry.get("deployment", {}), "num_gpus": gpus_per_replica}
    path = folder / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": chosen}, sort_keys=False))
    return path, null_name


def edit_repository(path: Path, edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrite the repository file at ``path`` after ``edit`` changed its list of entries in place."""
    written = yaml.safe_load(path.read_text())
    edit(written["models"])
    path.write_text(yaml.safe_dump(written, sort_keys=False))
