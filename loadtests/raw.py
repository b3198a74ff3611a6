"""The raw model: the segmenter's per-image work, timed without any serving around it.

"Raw" is what ``Segmenter`` does for a batch (``Runner.run``): stack the prepared inputs, normalize,
forward, and bring the outputs back to the original size with the argmax (or the panoptic
post-processing). Decoding and fitting to the input policy are done once beforehand: in the service
the codec does them, outside the segmenter.

A layout ``PxT`` runs P processes (multiprocessing, spawn) with T torch threads each, all on the same
inputs, started together at every batch size (a barrier); its throughput is the sum of theirs.
Torch is imported inside the functions, so a spawned process sets its threads before anything else.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import statistics
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadtests.common import TestImage


@dataclass(frozen=True)
class RawConfig:
    repository: Path
    model: str
    images: tuple[TestImage, ...]
    batch_sizes: tuple[int, ...]
    threads: int = 1
    duration_s: float = 5.0
    """Timed loop per batch size (at least ``min_iterations`` batches)."""
    min_iterations: int = 3
    warmup_iterations: int = 2


def layout_name(processes: int, threads: int) -> str:
    return f"{processes}x{threads}"


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> ``[(1, 2), (2, 1)]`` (processes x threads)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            processes, _, threads = part.lower().partition("x")
            out.append((int(processes), int(threads or 1)))
    if not out or min(min(p) for p in out) < 1:
        raise ValueError(f"layouts must look like 1x2,2x1, got {text!r}")
    return out


def default_layouts(cpus: int, replica_threads: int) -> list[tuple[int, int]]:
    """1 process with every core, one process per core, and the replicas' own thread count."""
    layouts = [(1, cpus), (cpus, 1), (1, replica_threads)]
    if cpus >= 4:
        layouts.append((cpus // 2, 2))
    return sorted(set(layouts), key=lambda pt: (pt[0], -pt[1]))


def prepare(spec, images: tuple[TestImage, ...]) -> list:
    """Decode and fit every image to the model's input policy (the codec's part, done once)."""
    from service.imaging.decode import decode_image
    from service.imaging.geometry import fit_to_policy
    from service.types import PreparedImage, SegmentOptions

    items = []
    for image in images:
        pixels, geometry = fit_to_policy(decode_image(image.data, max_pixels=1 << 30), spec.input)
        items.append(PreparedImage(pixels, geometry, SegmentOptions(model=spec.name)))
    return items


def measure_in_process(config: RawConfig, barrier: Any = None) -> dict[str, Any]:
    """Time ``Runner.run`` at each batch size in this process; returns per-batch-size numbers."""
    import torch

    from service.config import load_repository
    from service.models.runners import build_runner

    torch.set_num_threads(config.threads)
    repository = load_repository(config.repository)
    spec = repository.get(config.model)
    if spec is None:
        raise ValueError(f"model {config.model!r} is not in {config.repository}")
    runner = build_runner(spec, repository.weights_path(spec) if spec.weights else None)
    runner.warm_up()
    items = prepare(spec, config.images)
    n = len(items)
    batches: dict[str, Any] = {}
    for b in config.batch_sizes:
        k = 0

        def next_batch(b: int = b) -> list:
            nonlocal k
            batch = [items[(k + j) % n] for j in range(b)]
            k += b
            return batch

        for _ in range(config.warmup_iterations):
            runner.run(next_batch(), [time.perf_counter()] * b)
        if barrier is not None:
            barrier.wait(timeout=600)
        times: list[float] = []
        forward: list[float] = []
        post: list[float] = []
        started = time.perf_counter()
        while True:
            batch = next_batch()
            t0 = time.perf_counter()
            out = runner.run(batch, [t0] * b)
            t1 = time.perf_counter()
            times.append(t1 - t0)
            forward.append(out[0].timings_ms["forward"])
            post.append(out[0].timings_ms["postprocess"])
            if t1 - started >= config.duration_s and len(times) >= config.min_iterations:
                break
        elapsed = time.perf_counter() - started
        images = len(times) * b
        batches[str(b)] = {
            "batch_size": b,
            "iterations": len(times),
            "images": images,
            "elapsed_s": elapsed,
            "images_per_s": images / elapsed,
            "batch_ms_mean": statistics.fmean(times) * 1000,
            "batch_ms_p50": statistics.median(times) * 1000,
            "ms_per_image": statistics.fmean(times) * 1000 / b,
            "forward_ms_mean": statistics.fmean(forward),
            "postprocess_ms_mean": statistics.fmean(post),
        }
    return {
        "model": config.model,
        "threads": torch.get_num_threads(),
        "device": str(runner.device),
        "input_shape": list(items[0].pixels.shape),
        "original_shape": list(items[0].geometry.original),
        "batches": batches,
    }


def _worker(config: RawConfig, barrier: Any, results: Any, index: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(config.threads)  # before torch is imported in this process
    try:
        results.put((index, measure_in_process(config, barrier), None))
    except BaseException:
        if barrier is not None:
            barrier.abort()  # the others must not wait for this one
        results.put((index, None, traceback.format_exc()))


def measure_layout(config: RawConfig, processes: int, threads: int, timeout_s: float | None = None) -> dict:
    """Run ``processes`` spawned workers with ``threads`` torch threads each; aggregate per batch size."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    config = replace(config, threads=threads)
    workers = [ctx.Process(target=_worker, args=(config, barrier, results, i)) for i in range(processes)]
    for w in workers:
        w.start()
    per_batch = len(config.batch_sizes) * (config.duration_s + 30)
    deadline = time.monotonic() + (timeout_s or 180 + per_batch)
    outputs: dict[int, dict] = {}
    errors: list[str] = []
    try:
        while len(outputs) + len(errors) < processes:
            try:
                index, output, error = results.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue_module.Empty:
                errors.append("timed out waiting for the raw measurement")
                break
            if error:
                errors.append(error)
            else:
                outputs[index] = output
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    if errors:
        raise RuntimeError(f"raw measurement of {config.model} ({processes}x{threads}) failed:\n{errors[0]}")
    return aggregate(list(outputs.values()), processes, threads)


def aggregate(outputs: list[dict], processes: int, threads: int) -> dict[str, Any]:
    """One layout's numbers: throughputs add up over processes, latencies are averaged."""
    batches: dict[str, Any] = {}
    for key in outputs[0]["batches"]:
        rows = [o["batches"][key] for o in outputs]
        batches[key] = {
            "batch_size": rows[0]["batch_size"],
            "images": sum(r["images"] for r in rows),
            "images_per_s": sum(r["images_per_s"] for r in rows),
            "batch_ms_mean": statistics.fmean(r["batch_ms_mean"] for r in rows),
            "batch_ms_p50": statistics.fmean(r["batch_ms_p50"] for r in rows),
            "ms_per_image": statistics.fmean(r["ms_per_image"] for r in rows),
            "forward_ms_mean": statistics.fmean(r["forward_ms_mean"] for r in rows),
            "postprocess_ms_mean": statistics.fmean(r["postprocess_ms_mean"] for r in rows),
        }
    first = outputs[0]
    return {
        "layout": layout_name(processes, threads),
        "processes": processes,
        "threads": threads,
        "device": first["device"],
        "input_shape": first["input_shape"],
        "original_shape": first["original_shape"],
        "batches": batches,
    }


def best(layouts: list[dict]) -> dict[str, Any]:
    """The fastest (layout, batch size) of a model: "best raw"."""
    candidates = [
        {"layout": lay["layout"], "batch_size": row["batch_size"], "images_per_s": row["images_per_s"]}
        for lay in layouts
        for row in lay["batches"].values()
    ]
    return max(candidates, key=lambda c: c["images_per_s"])


def measure_model(
    config: RawConfig, layouts: list[tuple[int, int]], replica_threads: int, log=print
) -> dict[str, Any]:
    """Every layout of one model, the best of them, and the batch-1 latency at the replicas' threads."""
    results = []
    for processes, threads in layouts:
        log(f"  raw {config.model}: {layout_name(processes, threads)} ...")
        results.append(measure_layout(config, processes, threads))
    out: dict[str, Any] = {"layouts": results, "best": best(results), "replica_threads": replica_threads}
    single = next((r for r in results if r["processes"] == 1 and r["threads"] == replica_threads), None)
    if single and "1" in single["batches"]:
        out["batch1_latency_ms"] = single["batches"]["1"]["batch_ms_p50"]
        out["batch1_layout"] = single["layout"]
    return out
