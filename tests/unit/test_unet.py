"""U-Net shapes, odd sizes padded and cropped back, the builder's checks."""

import pytest
import torch
import torch.nn.functional as F

from service.models.unet import build_unet


def pad_to_multiple(
    x: torch.Tensor, multiple: int, value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom and right of [..., H, W] up to multiples; returns the tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo ``pad_to_multiple``."""
    return x[..., : size[0], : size[1]]


@pytest.mark.parametrize("bilinear", [True, False])
def test_output_has_input_size_and_class_channels(bilinear):
    model = build_unet(num_classes=5, depth=3, base_width=8, bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5, 64, 96)


def test_sides_must_be_multiples_of_two_to_the_depth():
    model = build_unet(num_classes=3, depth=3, base_width=8).eval()
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.randn(1, 3, 60, 64))


def test_odd_sizes_are_padded_and_cropped_back():
    model = build_unet(num_classes=3, depth=4, base_width=8).eval()
    x = torch.randn(1, 3, 77, 101)
    padded, size = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (80, 112) and size == (77, 101)
    torch.testing.assert_close(crop_to(padded, size), x)
    with torch.no_grad():
        out = crop_to(model(padded), size)
    assert out.shape == (1, 3, 77, 101)


def test_depth_and_width_change_the_network():
    small = build_unet(num_classes=4, depth=2, base_width=8)
    large = build_unet(num_classes=4, depth=4, base_width=16)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) > 10 * count(small)


def test_backward_reaches_every_parameter():
    model = build_unet(num_classes=2, depth=2, base_width=4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
