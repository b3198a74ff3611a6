"""The shipped smp-unet-shapes meets the quality floor on held-out images, and its ONNX export, served by
ONNX Runtime as its own entry, gives the same label maps."""

import numpy as np
import torch

from service.models.registry import load_model
from service.training.semantic import HELD_OUT_SIZES, evaluate, held_out_seeds, predict_labels
from service.training.shapes import make_sample

FLOOR_MIOU = 0.90
FLOOR_CLASS_IOU = 0.80
AGREEMENT = 0.995


def test_shipped_weights_meet_the_floor(repository):
    spec = repository.get("smp-unet-shapes")
    model = load_model(spec, repository.weights_path(spec))
    torch.set_num_threads(2)
    report = evaluate(model, spec, held_out_seeds(120))
    assert report.miou >= FLOOR_MIOU, report
    assert min(report.per_class.values()) >= FLOOR_CLASS_IOU, report


def test_onnx_entry_agrees_with_the_torch_model(repository):
    """>= 99.5 % of the pixels of the 200 held-out images get the same label from both entries."""
    torch_spec, onnx_spec = repository.get("smp-unet-shapes"), repository.get("smp-unet-shapes-onnx")
    assert onnx_spec.format == "onnx" and onnx_spec.input == torch_spec.input
    assert onnx_spec.classes == torch_spec.classes
    torch_model = load_model(torch_spec, repository.weights_path(torch_spec))
    onnx_model = load_model(onnx_spec, repository.weights_path(onnx_spec))
    torch.set_num_threads(2)
    same = total = 0
    for i, seed in enumerate(held_out_seeds(200)):
        image = make_sample(seed, HELD_OUT_SIZES[i % len(HELD_OUT_SIZES)]).image
        a = predict_labels(torch_model, image, torch_spec).numpy()
        b = predict_labels(onnx_model, image, onnx_spec).numpy()
        same += int(np.count_nonzero(a == b))
        total += a.size
    assert same / total >= AGREEMENT, same / total
