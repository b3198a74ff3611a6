"""Overlays and instance colours."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging.overlay import blend_overlay, instance_colors, palette

COLORS = palette([(0, 0, 0), (255, 0, 0), (0, 0, 255)])


def picture() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)


def test_palette() -> None:
    assert COLORS.dtype == np.uint8 and COLORS.shape == (3, 3)
    assert palette([]).shape == (0, 3)
    for bad in ([(1, 2)], [(256, 0, 0)], [(-1, 0, 0)], [(0.5, 0, 0)]):
        with pytest.raises(ValueError):
            palette(bad)


def test_background_kept_foreground_blended() -> None:
    image = picture()
    labels = np.zeros((5, 7), np.uint8)
    labels[1:3, 2:5] = 1
    labels[4, :] = 2
    out = blend_overlay(image, labels, COLORS, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    background = labels == 0
    np.testing.assert_array_equal(out[background], image[background])
    for class_id in (1, 2):
        where = labels == class_id
        expected = (image[where].astype(int) + COLORS[class_id].astype(int)) / 2
        assert np.abs(out[where] - expected).max() <= 1


def test_alpha_extremes_and_no_skip() -> None:
    image = picture()
    labels = np.random.default_rng(1).integers(0, 3, (5, 7))
    np.testing.assert_array_equal(blend_overlay(image, labels, COLORS, alpha=0.0), image)
    np.testing.assert_array_equal(
        blend_overlay(image, labels, COLORS, alpha=1.0, skip_class=None), COLORS[labels]
    )
    with pytest.raises(ValueError):
        blend_overlay(image, labels, COLORS, alpha=1.5)


def test_labels_beyond_the_palette_get_generated_colours() -> None:
    image = np.zeros((1, 3, 3), np.uint8)
    labels = np.array([[1, 9, 70000]], np.int64)
    out = blend_overlay(image, labels, COLORS, alpha=1.0)
    assert out[0, 0].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(out[0, 1:], instance_colors(np.array([9, 70000])))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        blend_overlay(picture(), np.zeros((4, 7), np.uint8), COLORS)


def test_instance_colors_are_deterministic_and_distinct() -> None:
    ids = np.arange(0, 200)
    colors = instance_colors(ids)
    assert colors.dtype == np.uint8 and colors.shape == (200, 3)
    assert colors[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colors.tolist()}) == 200
    assert (colors[1:].max(axis=1) > 150).all() and (colors[1:].min(axis=1) < 255).all()
    np.testing.assert_array_equal(instance_colors(ids.reshape(10, 20)), colors.reshape(10, 20, 3))
    neighbours = np.abs(colors[2:].astype(int) - colors[1:-1]).sum(axis=1)
    assert neighbours.min() > 60  # consecutive ids are easy to tell apart


def test_instance_colors_of_a_whole_id_map() -> None:
    id_map = np.random.default_rng(2).integers(0, 5000, (300, 400))  # above the per-element size
    np.testing.assert_array_equal(instance_colors(id_map), instance_colors(np.arange(5000))[id_map])
