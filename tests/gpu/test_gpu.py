"""GPU code paths, run by ``make gpu-check`` on a machine with CUDA (skipped everywhere else).

Each check compares the GPU path with an independent computation: reduced-precision label maps with the
fp32 ones on the held-out shapes images, the device's panoptic post-processing with the CPU's, the
memory gauges with torch's own counters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service import metrics
from service.config import ModelSpec
from service.imaging.geometry import fit_to_policy
from service.models.registry import load_model
from service.models.runners import build_runner
from service.training.shapes import make_sample
from service.types import PreparedImage, SegmentOptions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
HELD_OUT_SEED = 900_000_000  # the models' held-out seeds (model cards), never seen in training
IMAGES = 24
AGREEMENT = 0.995  # the bar: reduced precision must give the fp32 label on >= 99.5 % of pixels


def prepared(spec: ModelSpec, seed: int, size: tuple[int, int] = (200, 240)) -> PreparedImage:
    image = make_sample(seed, size).image
    pixels, geometry = fit_to_policy(image, spec.input)
    return PreparedImage(pixels, geometry, SegmentOptions(model=spec.name))


def labels_of(spec: ModelSpec, repository, device: str, seeds: list[int]) -> list[np.ndarray]:
    runner = build_runner(spec, repository.weights_path(spec))
    assert runner.device.type == device, f"{spec.name}: runner on {runner.device}, expected {device}"
    items = [prepared(spec, s) for s in seeds]
    return [r.labels for r in runner.run(items, [0.0] * len(items))]


@pytest.fixture(scope="module")
def seeds() -> list[int]:
    return [HELD_OUT_SEED + i for i in range(IMAGES)]


def on(spec: ModelSpec, device: str, precision: str = "fp32") -> ModelSpec:
    d = spec.deployment.model_copy(update={"device": device, "precision": precision})
    return spec.model_copy(update={"deployment": d})


@pytest.mark.parametrize("model", ["unet-shapes", "panoptic-shapes"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_agrees_with_fp32(repository, seeds, model, precision):
    spec = repository.get(model)
    reference = labels_of(on(spec, "cuda", "fp32"), repository, "cuda", seeds)
    reduced = labels_of(on(spec, "cuda", precision), repository, "cuda", seeds)
    same = sum(int((a == b).sum()) for a, b in zip(reference, reduced, strict=True))
    total = sum(a.size for a in reference)
    print(f"{model} {precision}: {same / total:.5f} of pixels agree with fp32")
    assert same / total >= AGREEMENT


@pytest.mark.parametrize("model", ["unet-shapes", "panoptic-shapes"])
def test_the_gpu_gives_the_cpus_labels(repository, seeds, model):
    spec = repository.get(model)
    cpu = labels_of(on(spec, "cpu"), repository, "cpu", seeds[:8])
    gpu = labels_of(on(spec, "cuda"), repository, "cuda", seeds[:8])
    same = sum(int((a == b).sum()) for a, b in zip(cpu, gpu, strict=True))
    assert same / sum(a.size for a in cpu) >= 0.999  # fp32 on both; only summation order differs


def test_model_is_channels_last_and_the_copy_is_pinned(repository):
    spec = on(repository.get("unet-shapes"), "cuda")
    runner = build_runner(spec, repository.weights_path(spec))
    conv_weights = [p for p in runner.model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    items = [prepared(spec, HELD_OUT_SEED), prepared(spec, HELD_OUT_SEED + 1)]
    pinned: list[bool] = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    torch.Tensor.pin_memory = spy  # type: ignore[method-assign]
    try:
        x = runner._to_device(items)
    finally:
        torch.Tensor.pin_memory = original  # type: ignore[method-assign]
    assert pinned == [True], "the host batch must go through pinned memory once"
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)


def test_panoptic_post_processing_runs_on_the_device_and_matches_the_cpu(repository, seeds):
    spec = repository.get("panoptic-shapes")
    gpu = build_runner(on(spec, "cuda"), repository.weights_path(spec))
    cpu = build_runner(on(spec, "cpu"), repository.weights_path(spec))
    seen_devices: set[str] = set()
    import service.models.panoptic_inference as panoptic_inference

    original = panoptic_inference.panoptic_from_centers

    def spy(semantic, *args, **kwargs):
        seen_devices.add(semantic.device.type)
        return original(semantic, *args, **kwargs)

    panoptic_inference.panoptic_from_centers = spy
    try:
        items = [prepared(spec, s) for s in seeds[:6]]
        on_gpu = gpu.run(items, [0.0] * len(items))
    finally:
        panoptic_inference.panoptic_from_centers = original
    assert seen_devices == {"cuda"}
    on_cpu = cpu.run(items, [0.0] * len(items))
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert (g.labels == c.labels).mean() >= 0.999
        assert abs(len(g.segments) - len(c.segments)) <= 1


def test_device_memory_gauges_follow_torch(repository):
    spec = on(repository.get("unet-shapes"), "cuda")
    runner = build_runner(spec, repository.weights_path(spec))
    sink = metrics.MemorySink()
    recorder = metrics.SegmenterMetrics(spec, runner.device, None, sink=sink)
    runner.run([prepared(spec, HELD_OUT_SEED)], [0.0])
    recorder.update(runner)
    tags = {"model": spec.name, "device": "cuda"}
    in_use = sink.gauges[sink.key(metrics.DEVICE_MEMORY.name, **tags)]
    peak = sink.gauges[sink.key(metrics.DEVICE_MEMORY_PEAK.name, **tags)]
    assert in_use == torch.cuda.memory_allocated(runner.device) > 0
    assert peak == torch.cuda.max_memory_allocated(runner.device) >= in_use


def test_cuda_timings_are_synchronized(repository):
    """The forward stage is timed after torch.cuda.synchronize: it cannot be shorter than the kernels."""
    spec = on(repository.get("unet-shapes"), "cuda", "fp32")
    model = load_model(spec, repository.weights_path(spec))
    runner = build_runner(spec, repository.weights_path(spec))
    items = [prepared(spec, HELD_OUT_SEED + i) for i in range(8)]
    runner.run(items, [0.0] * 8)  # warm
    result = runner.run(items, [0.0] * 8)[0]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    x = runner._to_device(items)
    start.record()
    with torch.inference_mode():
        model.to(runner.device)(x)
    end.record()
    torch.cuda.synchronize()
    assert result.timings_ms["forward"] >= 0.5 * start.elapsed_time(end)
