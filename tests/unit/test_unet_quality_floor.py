"""The shipped unet-shapes weights meet the quality floor on held-out images the training never saw."""

import torch

from service.models.registry import load_model
from service.training.semantic import HELD_OUT_SEED_BASE, TRAIN_SEED_BASE, evaluate, held_out_seeds

FLOOR_MIOU = 0.90
FLOOR_CLASS_IOU = 0.80


def test_held_out_seeds_are_disjoint_from_training():
    # Training draws seeds TRAIN_SEED_BASE + step * batch + i: far below the held-out base for any
    # realistic run (10^8 steps of batch 8).
    assert HELD_OUT_SEED_BASE > TRAIN_SEED_BASE + 10**8 * 8


def test_shipped_weights_meet_the_floor(repository):
    spec = repository.get("unet-shapes")
    model = load_model(spec, repository.weights_path(spec))
    torch.set_num_threads(2)
    report = evaluate(model, spec, held_out_seeds(120))
    assert report.miou >= FLOOR_MIOU, report
    assert min(report.per_class.values()) >= FLOOR_CLASS_IOU, report
