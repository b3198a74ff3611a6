"""torchvision Mask R-CNN behind our ``Runner`` contract, checked against torchvision itself.

Random weights (seeded), small inputs. The runner bypasses the model's own transform; these tests
show that what it returns is what torchvision's ``model(images)`` returns: exactly, on a batch at the
model's input scale, and with torchvision's own box rescaling and mask pasting at another resolution.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from service.imaging.encode import rle_bbox
from service.imaging.geometry import fit_to_policy
from service.imaging.instance import full_mask, instance_rles
from service.models.inference import Runner
from service.models.instance_inference import InstanceRunner
from service.models.registry import WeightsError, build_model, load_model, save_weights
from service.models.runners import build_runner
from service.types import PreparedImage, SegmentOptions
from tests.instance_entry import instance_spec


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec():
    return instance_spec()


@pytest.fixture(scope="module")
def model(spec):
    torch.manual_seed(0)
    return build_model(spec).eval()


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def prepared(image: np.ndarray, spec) -> PreparedImage:
    pixels, geometry = fit_to_policy(image, spec.input)
    return PreparedImage(pixels, geometry, SegmentOptions(model=spec.name))


def torchvision_forward(model: nn.Module, images: list[np.ndarray], size: int, max_size: int) -> list[dict]:
    """torchvision's own call: its transform (normalise, resize, batch), heads, post-processing."""
    reference = copy.deepcopy(model)
    reference.transform.min_size, reference.transform.max_size = (size,), max_size
    with torch.inference_mode():
        return reference([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images])


# --- builders --------------------------------------------------------------------------------------------


def test_the_builder_counts_background_in_num_classes(model, spec):
    assert isinstance(model, MaskRCNN)
    assert model.roi_heads.box_predictor.cls_score.out_features == spec.num_classes == 3
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3


@pytest.mark.parametrize(
    ("argument", "hint"),
    [
        ("min_size", "shortest_edge"),
        ("image_mean", "input.mean"),
        ("box_score_thresh", "instance.score_threshold"),
        ("box_detections_per_img", "instance.max_detections"),
        ("weights", "safetensors"),
    ],
)
def test_arguments_that_live_elsewhere_in_the_entry_are_refused(argument, hint):
    spec = instance_spec(arguments={argument: 1})
    with pytest.raises(ValueError, match=hint):
        build_model(spec)


def torchvision_as_fine_tuned(num_classes: int) -> nn.Module:
    """What torchvision builds for a v1 Mask R-CNN started from pretrained weights (FrozenBatchNorm2d
    in the ResNet body), built without downloading them."""
    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    return MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=num_classes)


@pytest.mark.slow
def test_both_kinds_of_v1_state_dict_load_strictly_and_compute_the_same(tmp_path):
    """The two v1 artefacts users have: fine-tuned from torchvision's weights (FrozenBatchNorm2d, no
    ``num_batches_tracked``) and trained from scratch (BatchNorm2d). Both load into the one entry, and
    the scratch one, with its batch-norm statistics, computes the features the original computes."""
    spec = instance_spec()
    fine_tuned, scratch = tmp_path / "fine_tuned.safetensors", tmp_path / "scratch.safetensors"
    save_weights(torchvision_as_fine_tuned(3), fine_tuned)
    torch.manual_seed(5)
    original = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **spec.arguments)
    original.eval()
    for bn in (m for m in original.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)  # statistics unlike the defaults, so a lost one shows
        bn.running_var.uniform_(0.5, 1.5)
    save_weights(original, scratch)
    assert isinstance(load_model(spec, fine_tuned).backbone.body.bn1, FrozenBatchNorm2d)
    loaded = load_model(spec, scratch)
    x = torch.from_numpy(noise(96, 128, 9)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ours, theirs = loaded.backbone(x), original.backbone(x)
    # FrozenBatchNorm2d folds the statistics into one scale and shift: equal up to float rounding,
    # relative to each level's magnitude (random weights make activations large); a statistic lost in
    # loading would move them by a sizeable fraction of it.
    for level, expected in theirs.items():
        scale = expected.abs().max()
        torch.testing.assert_close(ours[level] / scale, expected / scale, rtol=0, atol=1e-4)


def test_v2_loads_its_own_state_dict(tmp_path):
    spec = instance_spec(architecture="torchvision.maskrcnn_resnet50_fpn_v2")
    weights = tmp_path / "v2.safetensors"
    save_weights(build_model(spec), weights)
    assert any(k.endswith("num_batches_tracked") for k in load_model(spec, weights).state_dict())
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(instance_spec(), weights)


# --- the runner ------------------------------------------------------------------------------------------


def test_a_batch_gives_exactly_what_torchvision_gives(model, spec):
    """Two requests in one forward, at the model's scale (no resize): bit-for-bit torchvision's answer."""
    images = [noise(96, 128, 1), noise(96, 128, 2)]
    runner = InstanceRunner(spec, model)
    ours = runner.run([prepared(i, spec) for i in images], [0.0, 0.0])
    theirs = torchvision_forward(model, images, 96, 128)
    for segmentation, reference in zip(ours, theirs, strict=True):
        instances = segmentation.instances
        assert segmentation.batch_size == 2
        assert len(instances) == spec.instance.max_detections  # threshold 0: the cap decides
        np.testing.assert_array_equal(instances.boxes, reference["boxes"].numpy())
        np.testing.assert_array_equal(instances.scores, reference["scores"].numpy())
        np.testing.assert_array_equal(instances.class_ids, reference["labels"].numpy())
        for k in range(len(instances)):
            np.testing.assert_array_equal(full_mask(instances, k), reference["masks"][k, 0].numpy() > 0.5)


def test_at_another_resolution_boxes_and_masks_are_torchvisions_pasting_at_the_original_size(model, spec):
    """A 150x200 image runs at 96x128; our boxes and masks at 150x200 equal torchvision's own
    ``transform.postprocess`` (``resize_boxes`` + ``paste_masks_in_image``) of the same detections."""
    runner = InstanceRunner(spec, model)
    item = prepared(noise(150, 200, 3), spec)
    assert item.geometry.scaled == (96, 128) and item.geometry.original == (150, 200)
    with torch.inference_mode():
        detections = runner.forward(runner._to_device([item]))
        reference = model.transform.postprocess(copy.deepcopy(detections), [(96, 128)], [(150, 200)])[0]
        instances = runner.postprocess(detections, [item]).extras[0]["instances"]
    assert len(instances) > 0
    np.testing.assert_array_equal(instances.boxes, reference["boxes"].numpy())
    for k in range(len(instances)):
        assert full_mask(instances, k).shape == (150, 200)
        np.testing.assert_array_equal(full_mask(instances, k), reference["masks"][k, 0].numpy() > 0.5)


def test_with_a_mask_head_that_fills_its_box_each_mask_is_its_box_at_the_original_resolution(model, spec):
    """Mask logits forced to +10 (probability ~1 everywhere): each mask is then the box's pixels, so
    masks and boxes must agree at the client's resolution, whatever the scale the model ran at."""
    filled = copy.deepcopy(model)
    logits = filled.roi_heads.mask_predictor.mask_fcn_logits
    nn.init.zeros_(logits.weight)
    nn.init.constant_(logits.bias, 10.0)
    runner = InstanceRunner(spec, filled)
    (segmentation,) = runner.run([prepared(noise(300, 400, 4), spec)], [0.0])
    instances = segmentation.instances
    assert segmentation.labels.shape == (300, 400) and len(instances) > 0
    rles = instance_rles(instances)
    for k in range(len(instances)):
        x1, y1, x2, y2 = instances.boxes[k]
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue  # a sliver box: nothing to compare
        mx, my, mw, mh = rle_bbox(rles[k])
        assert abs(mx - x1) <= 1.5 and abs(my - y1) <= 1.5, (instances.boxes[k], (mx, my, mw, mh))
        assert abs(mx + mw - x2) <= 1.5 and abs(my + mh - y2) <= 1.5, (instances.boxes[k], (mx, my, mw, mh))


def test_the_entry_thresholds_reach_the_model(model, spec):
    strict = instance_spec(instance={"score_threshold": 0.99, "nms_threshold": 0.3, "max_detections": 3})
    runner = InstanceRunner(strict, copy.deepcopy(model))
    heads = runner.model.roi_heads
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.99, 0.3, 3)
    image = prepared(noise(96, 128, 1), spec)
    (loose,) = InstanceRunner(spec, copy.deepcopy(model)).run([image], [0.0])
    assert float(loose.instances.scores.max()) < 0.99  # random weights: nothing is that sure
    (none,) = runner.run([image], [0.0])
    assert len(none.instances) == 0 and not none.labels.any()


def test_the_runner_is_chosen_by_task_and_refuses_other_tasks(model, spec, repository, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights)
    runner = build_runner(spec, weights)
    assert isinstance(runner, InstanceRunner)
    runner.warm_up()
    semantic = repository.get("unet-shapes")
    with pytest.raises(ValueError, match="not an instance model"):
        InstanceRunner(semantic, model)
    assert type(build_runner(semantic, repository.weights_path(semantic))) is Runner


def test_under_bf16_autocast_the_backbone_is_reduced_and_the_box_heads_stay_fp32(model):
    """bf16 has 8 bits of mantissa: boxes decoded in it would sit on a 0.5 px grid between 64 and 128."""
    spec = instance_spec(deployment={"precision": "bf16"})
    runner = InstanceRunner(spec, copy.deepcopy(model))
    assert runner.autocast_dtype == torch.bfloat16
    images = runner._to_device([prepared(noise(96, 128, 6), spec)])
    with torch.inference_mode(), runner._autocast():
        assert runner.model.backbone(images.tensors)["0"].dtype == torch.bfloat16
    (detections,) = runner.forward(images)
    boxes = detections["boxes"]
    assert boxes.dtype == torch.float32 and len(boxes) > 0
    assert (boxes != boxes.to(torch.bfloat16).float()).any()
