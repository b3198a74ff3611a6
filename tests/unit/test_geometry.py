"""Fitting images to the input policy and bringing outputs back."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.config import InputPolicy
from service.imaging.geometry import fit_to_policy, pad_value, plan_geometry
from service.imaging.restore import restore_labels


@pytest.mark.parametrize(
    ("size", "policy", "scaled", "padded"),
    [
        ((512, 512), InputPolicy(size=128), (128, 128), (128, 128)),
        ((375, 500), InputPolicy(size=128), (96, 128), (96, 128)),
        ((100, 150), InputPolicy(size=128), (85, 128), (96, 128)),
        ((300, 1000), InputPolicy(size=128, size_divisor=32), (38, 128), (64, 128)),
        ((300, 1000), InputPolicy(mode="resize", size=64), (64, 64), (64, 64)),
        ((30, 50), InputPolicy(mode="pad", size=64), (30, 50), (32, 64)),
    ],
)
def test_plan(size, policy, scaled, padded):
    g = plan_geometry(*size, policy)
    assert (g.original, g.scaled, g.padded) == (size, scaled, padded)


def test_fit_pads_with_the_colour_that_normalizes_to_zero():
    image = np.full((100, 150, 3), 200, np.uint8)
    fitted, g = fit_to_policy(image, InputPolicy(size=128))
    assert fitted.shape == (96, 128, 3)
    assert np.all(fitted[g.scaled[0] :] == pad_value(InputPolicy()))
    assert np.all(fitted[: g.scaled[0]] == 200)


def test_restore_labels_argmax_at_original_size():
    policy = InputPolicy(size=64)
    g = plan_geometry(90, 130, policy)
    logits = torch.randn(4, *g.padded)
    labels = restore_labels(logits, g)
    crop = logits[:, : g.scaled[0], : g.scaled[1]]
    expected = F.interpolate(crop[None], size=(90, 130), mode="bilinear", align_corners=False)[0].argmax(0)
    assert labels.shape == (90, 130)
    torch.testing.assert_close(labels, expected)


def test_strips_give_the_same_labels_as_one_resize():
    """The strip-wise path (for very large images) equals one full bilinear resize."""
    g = plan_geometry(1000, 700, InputPolicy(size=64))
    torch.manual_seed(0)
    logits = torch.randn(3, *g.padded)
    full = restore_labels(logits, g, rows_per_chunk=10_000)
    strips = restore_labels(logits, g, rows_per_chunk=97)
    assert (full == strips).float().mean() > 0.9999


@pytest.mark.parametrize(
    "size", [(150, 200), (480, 640), (640, 480), (100, 500), (33, 47), (800, 1333), (97, 97)]
)
def test_shortest_edge_sizes_are_torchvisions_detection_transform_sizes(size):
    """The sizes GeneralizedRCNNTransform(min_size, max_size) resizes to, computed by torchvision."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    policy = InputPolicy(mode="shortest_edge", size=96, max_size=160, size_divisor=32)
    transform = GeneralizedRCNNTransform(96, 160, [0.0] * 3, [1.0] * 3).eval()
    with torch.inference_mode():
        images, _ = transform([torch.zeros(3, *size)])
    g = plan_geometry(*size, policy)
    assert g.scaled == tuple(images.image_sizes[0])
    assert g.padded == tuple(images.tensors.shape[-2:])  # both pad to a multiple of 32


def test_shortest_edge_without_a_cap_scales_the_shorter_side():
    g = plan_geometry(100, 500, InputPolicy(mode="shortest_edge", size=64, size_divisor=1))
    assert g.scaled == (64, 320)


def test_the_codec_side_imports_no_torch():
    """Decoding, fitting and encoding (the split topology's ImageCodec) need no torch: a fresh process
    that imports them has not loaded it."""
    import subprocess
    import sys

    code = "import sys, service.types, service.codec, service.pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
