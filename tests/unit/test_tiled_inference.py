"""Tiled inference against whole-image inference, and tiles through a model worker's batcher.

The equality proof: a fully convolutional network (a depth-2 U-Net: two poolings, receptive field
radius 26 px, measured below by its input gradient) tiled with tiles on the divisor's grid and a
dropped margin wider than its receptive field gives the whole-image label map, whatever the blending
and the column blocks. With a margin smaller than its receptive field it does not, and every pixel that
differs is within a receptive-field radius of an inner tile edge (where one tile saw zero padding
instead of the neighbouring pixels).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from loadtests.images import shapes_scene
from service.config import Limits, ModelSpec
from service.errors import DeadlineExceeded, InvalidImage, PayloadTooLarge
from service.imaging.geometry import fit_to_policy
from service.imaging.restore import restore_labels
from service.models.inference import Runner, TileInput
from service.models.registry import normalize
from service.models.unet import UNet
from service.pipeline import prepare_image
from service.types import ImageTensor, SegmentOptions
from tests.conftest import png_bytes, png_declaring
from tests.tiling_helpers import miou, tiled_labels, whole_labels, whole_logits, with_tile

CLASSES = [{"id": i, "name": f"c{i}", "color": [i, i, i]} for i in range(4)]


@pytest.fixture(scope="module")
def fcn() -> tuple[ModelSpec, torch.nn.Module]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = ModelSpec.model_validate(
        {
            "name": "fcn",
            "task": "semantic",
            "architecture": "unet",
            "arguments": {"depth": 2, "base_width": 8},
            "weights": "unused.safetensors",
            "classes": CLASSES,
            "input": {"size": 64, "size_divisor": 4},
        }
    )
    model = UNet(4, depth=2, base_width=8)
    # Random weights with BatchNorm statistics taken from a picture (one forward in training mode):
    # normalized features, so the random head gives all four classes in patches, not one class.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    picture = shapes_scene(296, 416, seed=4, cell=96)[0]
    with torch.no_grad():
        model.train()(normalize(torch.from_numpy(picture)[None], spec.input))
    return spec, model.eval()


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return shapes_scene(300, 420, seed=3, cell=96)[0]


def test_the_fcn_gives_every_class(fcn, scene):
    labels = whole_labels(with_tile(fcn[0]), fcn[1], scene)
    counts = np.bincount(labels.ravel(), minlength=4)
    assert (counts > 0.002 * labels.size).all() and (counts > 0.05 * labels.size).sum() >= 3, counts


def receptive_radius(model: torch.nn.Module, divisor: int) -> int:
    """How far (px) an output pixel's input gradient reaches, the largest over the pooling phases."""
    reach = 0
    for phase in range(divisor):
        x = torch.randn(1, 3, 128, 128, requires_grad=True)
        model(x)[0, :, 64 + phase, 64 + phase].sum().backward()
        rows = torch.nonzero(x.grad[0].abs().sum((0, 2)) > 0)[:, 0]
        reach = max(reach, 64 + phase - int(rows.min()), int(rows.max()) - 64 - phase)
    return reach


def test_the_fcns_receptive_field_fits_the_margin(fcn):
    assert receptive_radius(fcn[1], 4) <= 28


@pytest.mark.parametrize(
    "tile",
    [{"size": 128, "overlap": 64, "margin": 32, "blend": "constant"},
     {"size": 128, "overlap": 64, "margin": 32, "blend": "gaussian"},
     {"size": 96, "overlap": 72, "margin": 30, "blend": "gaussian", "memory_budget_bytes": 1 << 20}],
)  # fmt: skip
def test_tiled_equals_whole_image_when_the_receptive_field_fits_the_margin(fcn, scene, tile):
    spec, model = fcn
    spec = with_tile(spec, **tile)
    labels, request = tiled_labels(spec, Runner(spec, model), scene)
    expected = whole_labels(spec, model, scene)
    if tile.get("memory_budget_bytes"):
        assert len(request.plan.regions) > 1  # column blocks: the budget is below a full-width band
    assert labels.shape == scene.shape[:2]
    differ = labels != expected
    # 100 % in every run so far; a pixel may only differ on a float tie (tiles and the whole image
    # run convolutions of other sizes, whose sums can round differently in the last bit).
    if differ.any():
        logits = whole_logits(spec, model, scene)
        top2 = logits.topk(2, dim=0).values
        assert ((top2[0] - top2[1])[torch.from_numpy(differ)] < 1e-4).all()
    assert differ.mean() < 1e-4


def test_a_margin_below_the_receptive_field_disagrees_only_near_inner_tile_edges(fcn, scene):
    spec, model = fcn
    spec = with_tile(spec, size=96, overlap=16, margin=0, blend="gaussian")
    labels, request = tiled_labels(spec, Runner(spec, model), scene)
    differ = labels != whole_labels(spec, model, scene)
    assert 0.01 < differ.mean() < 0.2
    grid = request.plan.grid
    radius = receptive_radius(model, 4)
    near = np.zeros(differ.shape, bool)
    for y in grid.ys[1:]:  # rows near an inner edge: a tile's top, or the bottom of the tile above
        near[max(0, y - radius) : y + radius] = True
    for y in grid.ys[:-1]:
        near[max(0, y + grid.tile[0] - radius) : y + grid.tile[0] + radius] = True
    for x in grid.xs[1:]:
        near[:, max(0, x - radius) : x + radius] = True
    for x in grid.xs[:-1]:
        near[:, max(0, x + grid.tile[1] - radius) : x + grid.tile[1] + radius] = True
    assert differ.any() and not (differ & ~near).any()
    print(
        f"margin 0, overlap 16, tile 96: {differ.mean():.3%} of pixels differ, all within {radius} px "
        "of a seam"
    )


def test_at_another_scale_tiles_equal_whole_image_inference_brought_back(fcn, scene):
    spec, model = fcn
    for scale in (0.5, 1.5):
        tiled = with_tile(spec, size=128, overlap=72, margin=34, scale=scale)
        labels, _ = tiled_labels(tiled, Runner(tiled, model), scene)
        assert labels.shape == scene.shape[:2]
        assert (labels == whole_labels(tiled, model, scene)).mean() > 0.9999


def test_blending_never_holds_the_whole_image(fcn):
    """A tall image: the band buffer is a few tile rows, not C x H x W."""
    spec, model = fcn
    spec = with_tile(spec, size=64, overlap=16, margin=4)
    image = np.random.default_rng(1).integers(0, 255, (2000, 160, 3), dtype=np.uint8)
    from service.models import blending

    sizes = []
    original = blending.RegionBlender.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sizes.append(self.buffer.numel())

    blending.RegionBlender.__init__ = spy
    try:
        labels, request = tiled_labels(spec, Runner(spec, model), image)
    finally:
        blending.RegionBlender.__init__ = original
    assert labels.shape == (2000, 160) and max(sizes) <= 4 * request.plan.band.height * 160
    assert max(sizes) * 10 < 4 * 2000 * 160


@pytest.mark.slow
def test_shapes_scene_tiled_is_segmented_as_well_as_whole_and_resizing_loses_it(repository):
    """The shipped unet-shapes entry on a picture full of training-sized shapes (CI size; the 6000 x
    4000 run is ``loadtests/large.py quality``): tiled as well as whole-image inference, where the
    letterbox to 128 px loses the shapes."""
    from service.models.runners import build_runner

    torch.set_num_threads(1)
    spec = repository.get("unet-shapes")
    runner = build_runner(spec, repository.weights_path(spec))
    image, truth = shapes_scene(768, 1024, seed=5)
    assert not spec.input.tile.min_side <= 1024  # the shipped entry letterboxes this size ...
    tiled_spec = with_tile(spec, **{**spec.input.tile.model_dump(), "min_side": 512})  # ... tile it here
    labels, _ = tiled_labels(tiled_spec, runner, image)
    whole = whole_labels(tiled_spec, runner.model, image)
    pixels, geometry = fit_to_policy(image, spec.input)
    with torch.inference_mode():
        logits = runner.model(normalize(torch.from_numpy(pixels.copy())[None], spec.input))[0]
    resized = restore_labels(logits, geometry).numpy()
    tiled_miou, whole_miou, resized_miou = (miou(x, truth, 4) for x in (labels, whole, resized))
    print(f"mIoU tiled {tiled_miou:.3f} whole {whole_miou:.3f} letterboxed {resized_miou:.3f}")
    assert (labels == whole).mean() > 0.999
    assert tiled_miou > 0.85 and abs(tiled_miou - whole_miou) < 0.01 and resized_miou < 0.4


# --- through a worker's batcher -------------------------------------------------------------------


def null_worker(tiles_per_request: int = 2, forward_s: float = 0.02):
    """A null-model worker (a 1x1 conv, so labels follow colours pixel by pixel) whose forwards take
    ``forward_s``; tiles of 64 px, small images letterboxed to 64 px: the same shape as a tile."""
    from service.worker import ModelWorker

    spec = ModelSpec.model_validate(
        {
            "name": "null-tiles",
            "task": "semantic",
            "architecture": "null",
            "classes": CLASSES,
            "input": {
                "size": 64,
                "size_divisor": 16,
                "tile": {"min_side": 256, "size": 64, "overlap": 16, "tiles_per_request": tiles_per_request},
            },
            "batching": {"max_batch_size": 8},
        }
    )
    worker = ModelWorker(spec, None)
    torch.manual_seed(0)
    with torch.no_grad():
        worker.runner.model.proj.weight.copy_(torch.randn(4, 3, 1, 1))
    forwards: list[list] = []
    forward = worker.runner.forward
    worker.started = []  # when each forward began

    def slow_forward(x):
        worker.started.append(time.perf_counter())
        time.sleep(forward_s)
        return forward(x)

    worker.runner.forward = slow_forward
    on_group = worker.runner.on_group

    def record(items, *args):
        forwards.append(list(items))
        on_group(items, *args)

    worker.runner.on_group = record
    return worker, forwards


def prepared(worker, image: np.ndarray, request_id: str, deadline: float | None = None):
    options = SegmentOptions(model=worker.spec.name, request_id=request_id, deadline=deadline)
    return prepare_image(png_bytes(image), "image/png", options, worker.spec, Limits())


def pointwise_labels(worker, image: np.ndarray) -> np.ndarray:
    """The null model is pointwise: its labels are the argmax of one 1x1 conv of each pixel."""
    with torch.inference_mode():
        logits = worker.runner.model(normalize(torch.from_numpy(image)[None], worker.spec.input))[0]
    return logits.max(0).indices.numpy()


def test_small_requests_share_forwards_with_a_large_one_and_are_not_starved():
    """Three clients send small images (the tile's shape) while a large request runs: they ride in
    forwards with its tiles, which never hold more than its quota, and each waits for about the forward
    running when it arrived and its own, not for the whole image."""
    worker, forwards = null_worker(tiles_per_request=2)
    rng = np.random.default_rng(0)
    large = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    smalls = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    waits: list[tuple[float, float]] = []

    async def client(k: int) -> None:
        await asyncio.sleep(0.1 + 0.013 * k)
        for n, small in enumerate(smalls):
            item = prepared(worker, small, f"small-{k}-{n}")
            t1 = time.perf_counter()
            await worker.segment(item)
            waits.append((t1, time.perf_counter()))

    async def scenario():
        t0 = time.perf_counter()
        big = asyncio.ensure_future(worker.segment(prepared(worker, large, "large")))
        await asyncio.gather(*(client(k) for k in range(3)))
        assert not big.done()  # the small requests were answered while the large one ran
        return await big, time.perf_counter() - t0

    segmentation, large_s = asyncio.run(scenario())
    tiles = [sum(isinstance(it, TileInput) for it in items) for items in forwards]
    shared = [items for items in forwards if {isinstance(it, TileInput) for it in items} == {True, False}]
    assert max(tiles) <= 2  # the request's quota per batch
    assert shared  # small images of the tile's shape rode in forwards with tiles
    # Each small request waited for at most the forward running when it came and its own: counted in
    # forwards, not seconds, so a busy machine does not change the verdict.
    forwards_waited = [sum(t1 < t < t2 for t in worker.started) for t1, t2 in waits]
    assert len(waits) == 12 and max(forwards_waited) <= 2, forwards_waited
    assert max(t2 - t1 for t1, t2 in waits) < large_s / 3
    assert segmentation.labels.shape == (400, 400)
    np.testing.assert_array_equal(segmentation.labels, pointwise_labels(worker, large))
    assert segmentation.timings_ms["tiles"] > 0 and segmentation.batch_size >= 2


def test_tiles_of_two_large_requests_share_forwards():
    worker, forwards = null_worker(tiles_per_request=3, forward_s=0.01)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (300, 260, 3), dtype=np.uint8) for _ in range(2)]

    async def both():
        return await asyncio.gather(
            *(worker.segment(prepared(worker, im, f"l{k}")) for k, im in enumerate(images))
        )

    results = asyncio.run(both())
    owners = [{it.options.request_id for it in items if isinstance(it, TileInput)} for items in forwards]
    assert any(len(o) == 2 for o in owners)
    assert max(sum(isinstance(it, TileInput) for it in items) for items in forwards) <= 6
    for result, image in zip(results, images, strict=True):
        np.testing.assert_array_equal(result.labels, pointwise_labels(worker, image))


def test_a_tiled_request_past_its_deadline_stops_and_leaves_no_tiles_queued():
    worker, forwards = null_worker(tiles_per_request=2, forward_s=0.02)
    image = np.random.default_rng(2).integers(0, 255, (600, 600, 3), dtype=np.uint8)

    async def late():
        with pytest.raises(DeadlineExceeded):
            await worker.segment(prepared(worker, image, "late", deadline=time.time() + 0.2))
        await asyncio.sleep(0.1)
        assert worker.batcher.queued() == 0
        return await worker.segment(prepared(worker, image[:64, :64], "next"))

    assert asyncio.run(late()).labels.shape == (64, 64)
    assert sum(isinstance(it, TileInput) for items in forwards for it in items) < 121  # stopped early


# --- the codec's side -----------------------------------------------------------------------------


def test_prepare_image_tiles_large_images_only(repository):
    spec = repository.get("unet-shapes")
    small = prepared_for(spec, np.zeros((1000, 2047, 3), np.uint8))
    assert not small.tiled and small.pixels.shape[:2] == (64, 128)
    large = prepared_for(spec, np.zeros((100, 2048, 3), np.uint8))
    assert large.tiled and large.pixels.shape == (100, 2048, 3) and large.geometry.padded == (112, 2048)


def test_pixel_tensors_are_tiled_and_limited_as_decoded_images_are(repository):
    """The Open Inference Protocol's UINT8 tensors take the same way as an encoded file of those pixels."""
    spec = repository.get("unet-shapes")
    pixels = np.random.default_rng(1).integers(0, 255, (100, 2048, 3), dtype=np.uint8)
    from_tensor = prepare_image(ImageTensor(pixels), None, SegmentOptions(model=spec.name), spec, Limits())
    from_png = prepared_for(spec, pixels)
    assert from_tensor.tiled and from_png.tiled
    assert from_tensor.geometry == from_png.geometry
    np.testing.assert_array_equal(from_tensor.pixels, from_png.pixels)
    panoptic = repository.get("panoptic-shapes")  # input.max_pixels 4 MP
    with pytest.raises(PayloadTooLarge, match=r"'panoptic-shapes' segments images of up to 4194304 pixels"):
        prepare_image(ImageTensor(np.zeros((2049, 2048, 3), np.uint8)), None,
                      SegmentOptions(model=panoptic.name), panoptic, Limits())  # fmt: skip


def prepared_for(spec, image):
    return prepare_image(png_bytes(image), None, SegmentOptions(model=spec.name), spec, Limits())


def test_a_models_pixel_limit_refuses_from_the_header_and_names_it(repository):
    spec = repository.get("panoptic-shapes")
    body = png_declaring(4096, 4096)  # 16 MP: under the app's 40 MP, over the model's 4 MP
    with pytest.raises(PayloadTooLarge, match=r"'panoptic-shapes' segments images of up to 4194304 pixels"):
        prepare_image(body, None, SegmentOptions(model=spec.name), spec, Limits())
    with pytest.raises(PayloadTooLarge, match="above the limit of 40000000"):
        prepare_image(png_declaring(8000, 8000), None, SegmentOptions(model="unet-shapes"),
                      repository.get("unet-shapes"), Limits())  # fmt: skip


def test_a_truncated_large_png_is_invalid(repository):
    body = png_bytes(np.random.default_rng(0).integers(0, 255, (2100, 2100, 3), dtype=np.uint8))
    spec = repository.get("unet-shapes")
    with pytest.raises(InvalidImage, match="truncated"):
        prepare_image(body[: len(body) // 2], None, SegmentOptions(model=spec.name), spec, Limits())
