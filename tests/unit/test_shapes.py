"""The synthetic dataset: deterministic, labels consistent with instances, varied."""

import numpy as np

from service.training.shapes import (
    BACKGROUND,
    SHAPE_CLASSES,
    STRIPES,
    ShapesConfig,
    make_batch,
    make_sample,
)


def test_same_seed_same_sample_and_different_seeds_differ():
    a, b = make_sample(11, (96, 128)), make_sample(11, (96, 128))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    np.testing.assert_array_equal(a.instances, b.instances)
    assert not np.array_equal(make_sample(12, (96, 128)).image, a.image)


def test_shapes_and_dtypes_for_non_square_sizes():
    for size in [(80, 128), (128, 96), (200, 300)]:
        s = make_sample(3, size)
        assert s.image.shape == (*size, 3) and s.image.dtype == np.uint8
        assert s.semantic.shape == size and s.semantic.dtype == np.uint8
        assert s.instances.shape == size and s.instances.dtype == np.int32


def test_instances_agree_with_semantic_labels():
    for seed in range(20):
        s = make_sample(seed)
        assert (s.instances > 0).sum() == (s.semantic != BACKGROUND).sum()
        for instance_id, cls in s.instance_classes.items():
            assert cls in SHAPE_CLASSES
            assert np.all(s.semantic[s.instances == instance_id] == cls)
        assert set(np.unique(s.instances)) - {0} == set(s.instance_classes)


def test_class_is_not_decided_by_colour():
    """Every shape class appears in many colours: the mean colour of a class says nothing stable."""
    colours = {c: [] for c in SHAPE_CLASSES}
    for seed in range(40):
        s = make_sample(seed, (128, 128))
        for instance_id, cls in s.instance_classes.items():
            colours[cls].append(s.image[s.instances == instance_id].mean(axis=0))
    for cls, values in colours.items():
        assert len(values) > 10
        assert np.std(np.array(values), axis=0).min() > 30, cls  # colours spread widely per class


def test_touching_and_overlapping_shapes_occur():
    touching = 0
    for seed in range(30):
        s = make_sample(seed, (128, 128))
        ids = s.instances
        # Two different instances side by side (horizontally adjacent pixels).
        a, b = ids[:, :-1], ids[:, 1:]
        touching += int(np.any((a > 0) & (b > 0) & (a != b)))
    assert touching >= 5


def test_panoptic_variant_has_stripes_stuff_without_instances():
    seen = False
    for seed in range(10):
        s = make_sample(seed, (128, 128), ShapesConfig(stripes=True))
        stripes = s.semantic == STRIPES
        seen |= bool(stripes.any())
        assert not np.any(s.instances[stripes])
    assert seen


def test_batch_stacks_one_size():
    images, semantic, instances = make_batch(range(3), (96, 112))
    assert (
        images.shape == (3, 96, 112, 3) and semantic.shape == (3, 96, 112) and instances.shape == (3, 96, 112)
    )
