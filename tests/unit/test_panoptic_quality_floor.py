"""The shipped panoptic-shapes weights keep their quality floor on held-out images never trained on.

The floor is the model card's (models/panoptic-shapes/README.md): PQ >= 0.75 and PQ_things >= 0.70,
checked on the first held-out images through the same path as ``segserve evaluate --model
panoptic-shapes`` (COCO files, panopticapi-style PQ), with no extra tolerance.
"""

from __future__ import annotations

from pathlib import Path

import torch

from service.config import load_repository
from service.models.registry import load_model
from service.training.panoptic import evaluate_pq
from service.training.semantic import held_out_seeds

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository.yaml"
IMAGES = 200
PQ_FLOOR = 0.75
PQ_THINGS_FLOOR = 0.70


def test_shipped_panoptic_weights_meet_the_floor(tmp_path):
    repo = load_repository(REPOSITORY)
    spec = repo.get("panoptic-shapes")
    assert spec is not None
    torch.manual_seed(0)
    model = load_model(spec, repo.weights_path(spec))
    report = evaluate_pq(model, spec, held_out_seeds(IMAGES), out=tmp_path)
    assert report.images == IMAGES
    assert report.all.pq >= PQ_FLOOR, report.as_dict()
    assert report.things.pq >= PQ_THINGS_FLOOR, report.as_dict()
