"""The panoptic network's contract and the PanopticRunner (geometry, offsets, COCO output)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from service.config import ClassSpec, InputPolicy, ModelSpec, PanopticSpec
from service.imaging.encode import decode_rle
from service.imaging.geometry import fit_to_policy
from service.models.panoptic import build_panoptic_unet
from service.models.panoptic_inference import PanopticRunner
from service.models.registry import build_model
from service.types import PreparedImage, SegmentOptions


def spec(**panoptic) -> ModelSpec:
    names = ("background", "circle", "rectangle", "triangle", "stripes")
    return ModelSpec(
        name="panoptic-test",
        task="panoptic",
        architecture="panoptic_unet",
        arguments={"depth": 2, "base_width": 4},
        weights="panoptic-test/model.safetensors",
        classes=[
            ClassSpec(id=i, name=n, color=(i, i, i), isthing=i in (1, 2, 3)) for i, n in enumerate(names)
        ],
        input=InputPolicy(mode="letterbox", size=32, size_divisor=16),
        panoptic=PanopticSpec(
            **{"center_threshold": 0.1, "nms_kernel": 3, "top_k": 10, "stuff_area": 4, **panoptic}
        ),
    )


def prepared(image: np.ndarray, s: ModelSpec) -> PreparedImage:
    return PreparedImage(*fit_to_policy(image, s.input), SegmentOptions(model=s.name))


@pytest.mark.parametrize("size", [(16, 16), (32, 48)])
def test_forward_returns_the_three_heads_at_input_size(size):
    model = build_panoptic_unet(num_classes=5, depth=2, base_width=4).eval()
    out = model(torch.zeros(2, 3, *size))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semantic": (2, 5, *size),
        "center": (2, 1, *size),
        "offset": (2, 2, *size),
    }


def test_registry_builds_it_and_backward_reaches_every_parameter():
    model = build_model(spec())
    out = model(torch.randn(1, 3, 16, 16))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


class FakePanoptic(nn.Module):
    """Two circles side by side at the 16 x 32 model input: A (columns 0..15) whose centre is near
    the left border at x=2, B (16..31) centred at x=20. Offsets point at those centres."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, _, h, w = x.shape
        semantic = torch.zeros(b, 5, h, w)
        semantic[:, 1] = 10.0  # every pixel is a circle
        center = torch.zeros(b, 1, h, w)
        center[:, 0, 8, 2], center[:, 0, 8, 20] = 0.9, 0.8
        xs = torch.arange(w).float()
        target_x = torch.where(xs < 16, 2.0, 20.0)
        offset = torch.zeros(b, 2, h, w)
        offset[:, 0] = 8.0 - torch.arange(h).float()[:, None]
        offset[:, 1] = target_x - xs
        return {"semantic": semantic, "center": center, "offset": offset}


def test_runner_restores_geometry_and_scales_offsets():
    s = spec()
    runner = PanopticRunner(s, FakePanoptic(), device=torch.device("cpu"))
    image = np.zeros((64, 128, 3), np.uint8)  # letterboxed to 16 x 32: a 4x resize
    [result] = runner.run([prepared(image, s)], [0.0])
    assert result.labels.shape == (64, 128) and result.labels.dtype == np.uint8 and (result.labels == 1).all()
    ids = result.panoptic
    assert ids.dtype == np.int32 and ids.shape == (64, 128)
    # Unscaled offsets would send A's right part (whose centre is far left) to B.
    assert (ids[:, :64] == 1).all() and (ids[:, 64:] == 2).all()
    a, b = result.segments
    assert (a["category_id"], a["isthing"], a["area"], a["bbox"]) == (1, True, 64 * 64, [0, 0, 64, 64])
    assert b["bbox"] == [64, 0, 64, 64]
    assert a["score"] == pytest.approx(0.9) and b["score"] == pytest.approx(0.8)
    assert np.array_equal(decode_rle(b["rle"]), ids == 2)


def test_runner_on_the_real_network_gives_consistent_maps_and_warms_up():
    s = spec(center_threshold=-1.0)  # random weights: let every peak count
    torch.manual_seed(0)
    runner = PanopticRunner(s, build_model(s), device=torch.device("cpu"))
    runner.warm_up()
    rng = np.random.default_rng(0)
    items = [
        prepared(rng.integers(0, 255, size, dtype=np.uint8), s)
        for size in [(40, 30, 3), (40, 30, 3), (25, 60, 3)]
    ]
    for item, result in zip(items, runner.run(items, [0.0] * 3), strict=True):
        h, w = item.geometry.original
        assert result.labels.shape == result.panoptic.shape == (h, w)
        listed = {seg["id"] for seg in result.segments}
        assert set(np.unique(result.panoptic)) - {0} == listed
        assert sum(seg["area"] for seg in result.segments) == int((result.panoptic > 0).sum())


@pytest.mark.parametrize(
    ("change", "message"), [({"nms_kernel": 4}, "odd"), ({"top_k": 1000}, "below label_divisor")]
)
def test_unusable_post_processing_settings_are_refused_with_the_config(change, message):
    with pytest.raises(ValueError, match=message):
        spec(**change)


def test_a_semantic_spec_is_refused_by_the_panoptic_runner():
    semantic = spec().model_copy(update={"task": "semantic", "panoptic": None})
    with pytest.raises(ValueError, match="not a panoptic model"):
        PanopticRunner(semantic, FakePanoptic(), device=torch.device("cpu"))
