"""The independent computation the served results are checked against: the model called directly."""

from __future__ import annotations

import numpy as np
import torch

from service.config import ModelSpec, Repository
from service.imaging.decode import decode_image
from service.models.registry import load_model
from service.training.semantic import predict_labels

_MODELS: dict[str, tuple] = {}


def _model(repository: Repository, name: str):
    if name not in _MODELS:
        spec = repository.get(name)
        _MODELS[name] = (spec, load_model(spec, repository.weights_path(spec)))
    return _MODELS[name]


def direct_labels(repository: Repository, name: str, body: bytes) -> np.ndarray:
    """Decode and run the model in this process, one thread, batch 1 (like the served path)."""
    spec, model = _model(repository, name)
    torch.set_num_threads(1)
    image = decode_image(body, max_pixels=10**9)
    return predict_labels(model, image, spec).numpy().astype(np.uint8)


def spec_of(repository: Repository, name: str) -> ModelSpec:
    return repository.get(name)
