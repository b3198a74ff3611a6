"""Panoptic-DeepLab targets, losses, and the resumable training loop on a tiny network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from service.config import ClassSpec, InputPolicy, ModelSpec, PanopticSpec
from service.models.registry import build_model, save_weights
from service.models.unet import build_unet
from service.training.metrics import IGNORE_INDEX
from service.training.panoptic import (
    TrainConfig,
    load_initial_weights,
    panoptic_losses,
    panoptic_targets,
    train,
    training_batch,
)


def tiny_spec() -> ModelSpec:
    names = ("background", "circle", "rectangle", "triangle", "stripes")
    return ModelSpec(
        name="panoptic-tiny",
        task="panoptic",
        architecture="panoptic_unet",
        arguments={"depth": 2, "base_width": 4},
        weights="panoptic-tiny/model.safetensors",
        classes=[
            ClassSpec(id=i, name=n, color=(i, i, i), isthing=i in (1, 2, 3)) for i, n in enumerate(names)
        ],
        input=InputPolicy(mode="letterbox", size=64, size_divisor=16),
        panoptic=PanopticSpec(center_threshold=0.1, nms_kernel=3, top_k=20, stuff_area=4),
    )


def test_targets_put_unit_gaussians_at_visible_centres_and_offsets_on_thing_pixels():
    instances = np.zeros((20, 30), np.int32)
    instances[2:7, 3:8] = 1  # centre (4, 5)
    instances[10:20, 20:30] = 2  # cut by the border: centre of the visible part (14.5, 24.5)
    heatmap, offsets = panoptic_targets(instances, sigma=2.0)
    assert heatmap[4, 5] == pytest.approx(1.0)
    assert heatmap.max() <= 1.0 and heatmap[14:16, 24:26] == pytest.approx(np.exp(-0.5 / 8), rel=1e-5)
    assert offsets[:, 2, 3].tolist() == [2.0, 2.0] and offsets[:, 19, 29].tolist() == [-4.5, -4.5]
    assert not offsets[:, instances == 0].any()


def test_losses_vanish_on_a_perfect_prediction():
    spec = tiny_spec()
    batch = training_batch(3, TrainConfig(batch_size=2), spec)  # step 3: padded columns present
    assert (batch["semantic"] == IGNORE_INDEX).any() and (batch["center_weight"] == 0).any()
    semantic = torch.nn.functional.one_hot(batch["semantic"].clamp(max=4), 5).permute(0, 3, 1, 2).float() * 50
    outputs = {"semantic": semantic, "center": batch["center"], "offset": batch["offset"]}
    losses = panoptic_losses(outputs, batch, TrainConfig(), 5)
    assert losses["ce"].item() < 1e-6 and losses["center"].item() == 0 and losses["offset"].item() == 0
    outputs["offset"] = batch["offset"] + 1.0
    assert panoptic_losses(outputs, batch, TrainConfig(), 5)["offset"].item() == pytest.approx(2.0)


def test_train_writes_weights_and_resumes_from_its_checkpoint(tmp_path, capsys):
    spec = tiny_spec()
    config = TrainConfig(steps=2, batch_size=2, val_every=100, val_images=2, checkpoint_every=1)
    weights = tmp_path / "model" / "model.safetensors"
    report = train(spec, weights, tmp_path / "checkpoints", config)
    assert weights.exists() and report.images == 2
    history = json.loads((tmp_path / "model" / "training.json").read_text())["history"]
    assert [row["step"] for row in history] == [2] and "all" in history[0]
    first = load_file(weights)
    train(spec, weights, tmp_path / "checkpoints", config)  # nothing left to do: resumes at the end
    assert "resuming from step 2" in capsys.readouterr().out
    assert all(torch.equal(v, first[k]) for k, v in load_file(weights).items())
    with pytest.raises(SystemExit, match="another configuration"):
        train(spec, weights, tmp_path / "checkpoints", TrainConfig(steps=3, batch_size=2))


def test_stop_at_ends_early_on_the_same_schedule_and_a_rerun_continues(tmp_path, capsys):
    from safetensors import safe_open

    spec = tiny_spec()
    config = TrainConfig(steps=3, batch_size=2, val_every=100, val_images=2, checkpoint_every=1)
    weights = tmp_path / "model" / "model.safetensors"
    train(spec, weights, tmp_path / "checkpoints", config, stop_at=1)
    with safe_open(str(weights), "pt") as f:
        assert f.metadata()["steps"] == "1" and f.metadata()["schedule_steps"] == "3"
    history = json.loads((tmp_path / "model" / "training.json").read_text())["history"]
    assert [row["step"] for row in history] == [1]
    train(spec, weights, tmp_path / "checkpoints", config)  # the same config: continues to step 3
    assert "resuming from step 1" in capsys.readouterr().out
    history = json.loads((tmp_path / "model" / "training.json").read_text())["history"]
    assert [row["step"] for row in history] == [1, 3]


def test_semantic_second_stage_starts_from_its_init_weights(tmp_path):
    """--init-weights on a semantic model: a second stage starts from the first stage's weights."""
    from service.models.registry import WeightsError
    from service.training import semantic

    spec = ModelSpec(
        name="tiny", task="semantic", architecture="unet", arguments={"depth": 2, "base_width": 4},
        weights="m.safetensors", classes=tiny_spec().classes[:4], input=InputPolicy(size=32, size_divisor=4),
    )  # fmt: skip
    first = build_model(spec)
    save_weights(first, tmp_path / "first.safetensors")
    config = semantic.TrainConfig(
        steps=1,
        batch_size=2,
        lr=0.0,
        weight_decay=0.0,
        val_every=100,
        init_weights=str(tmp_path / "first.safetensors"),
    )
    semantic.train(spec, tmp_path / "second.safetensors", tmp_path / "checkpoints", config)
    second = load_file(tmp_path / "second.safetensors")
    # lr 0: the parameters stay the loaded ones (BatchNorm's running statistics move in training mode).
    for name, parameter in first.named_parameters():
        assert torch.equal(second[name], parameter.detach()), name
    missing = semantic.TrainConfig(steps=1, init_weights=str(tmp_path / "absent.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        semantic.train(spec, tmp_path / "third.safetensors", tmp_path / "other", missing)


def test_initial_weights_come_from_a_semantic_trunk_or_a_panoptic_model(tmp_path):
    unet = build_unet(num_classes=4, depth=2, base_width=4)
    save_weights(unet, tmp_path / "unet.safetensors")
    model = build_model(tiny_spec())
    random = load_initial_weights(model, tmp_path / "unet.safetensors")
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in unet.trunk.state_dict().items())
    assert random and all(not k.startswith("trunk.") for k in random)
    save_weights(model, tmp_path / "panoptic.safetensors")
    assert load_initial_weights(build_model(tiny_spec()), tmp_path / "panoptic.safetensors") == []
    save_weights(build_unet(num_classes=4, depth=3, base_width=4), tmp_path / "deeper.safetensors")
    with pytest.raises(ValueError, match="trunk tensors do not match"):
        load_initial_weights(model, tmp_path / "deeper.safetensors")


def test_command_line_evaluates_the_shipped_model_through_coco_files(tmp_path, capsys):
    from service.cli import main

    repository = str(Path(__file__).resolve().parents[2] / "models" / "repository.yaml")
    args = ["evaluate", "--model", "panoptic-shapes", "--repository", repository, "--images", "3"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)["held_out"]
    assert report["images"] == 3 and set(report) >= {"all", "things", "stuff", "per_class"}
    assert len(list((tmp_path / "pred" / "panoptic").glob("*.png"))) == 3
    assert json.loads((tmp_path / "gt" / "panoptic.json").read_text())["annotations"]
    assert main(["evaluate", "--model", "no-such-model", "--repository", repository]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
