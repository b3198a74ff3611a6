"""The shipped smp-unet-shapes meets the quality floor on held-out images, and its ONNX export, served by
ONNX Runtime as its own entry, gives the same label maps."""

import pytest
import torch

from service.imaging.geometry import fit_to_policy, restore_labels
from service.models.registry import load_model, normalize, select_output
from service.training.semantic import HELD_OUT_SIZES, evaluate, held_out_seeds
from service.training.shapes import make_sample

pytestmark = pytest.mark.slow  # model quality over 120-200 held-out images

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
        # Both entries have the same input policy: the image is prepared once and fed to both.
        fitted, geometry = fit_to_policy(
            make_sample(seed, HELD_OUT_SIZES[i % len(HELD_OUT_SIZES)]).image, torch_spec.input
        )
        x = normalize(torch.tensor(fitted)[None], torch_spec.input)
        with torch.inference_mode():
            a = restore_labels(select_output(torch_model(x), torch_spec.output)[0], geometry)
            b = restore_labels(select_output(onnx_model(x), onnx_spec.output)[0], geometry)
        same += int((a == b).sum())
        total += a.numel()
    print(f"ONNX and torch agree on {same / total:.5f} of {total} held-out pixels")
    assert same / total >= AGREEMENT, same / total
