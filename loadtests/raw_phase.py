"""The benchmark's raw phase: each model in process x thread layouts (spawned processes), the best.

A layout ``PxT`` runs P processes (multiprocessing, spawn) with T torch threads each, all on the same
inputs, started together at every batch size (a barrier); its throughput is the sum of theirs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import statistics
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtests.common import log, parse_int_list
from loadtests.raw import RawConfig, measure_in_process


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


def raw_batch_sizes(text: str, max_batch_size: int) -> tuple[int, ...]:
    """The sizes asked for, else powers of two up to ``max_batch_size`` and the max itself."""
    if text:
        return tuple(parse_int_list(text))
    sizes = {max_batch_size}
    b = 1
    while b < max_batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def _worker(config: RawConfig, barrier: Any, results: Any, index: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(config.threads)  # before torch is imported in this process
    try:
        results.put((index, measure_in_process(config, barrier), None))
    except BaseException:
        if barrier is not None:
            barrier.abort()  # the others must not wait for this one
        results.put((index, None, traceback.format_exc()))


def _collect(results: Any, processes: int, deadline: float) -> tuple[dict[int, dict], list[str]]:
    outputs: dict[int, dict] = {}
    errors: list[str] = []
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
    return outputs, errors


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
    try:
        outputs, errors = _collect(results, processes, time.monotonic() + (timeout_s or 180 + per_batch))
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
    summed = ("images", "images_per_s")
    averaged = ("batch_ms_mean", "batch_ms_p50", "ms_per_image", "forward_ms_mean", "postprocess_ms_mean")
    batches: dict[str, Any] = {}
    for key in outputs[0]["batches"]:
        rows = [o["batches"][key] for o in outputs]
        batches[key] = {"batch_size": rows[0]["batch_size"]}
        batches[key].update({k: sum(r[k] for r in rows) for k in summed})
        batches[key].update({k: statistics.fmean(r[k] for r in rows) for k in averaged})
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


def measure_model(config: RawConfig, layouts: list[tuple[int, int]], replica_threads: int) -> dict[str, Any]:
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


def run_raw(args, repository_path: Path, models: list[str], images) -> dict[str, Any]:
    """Every model's raw numbers: in quick mode only the replicas' own layout."""
    from service.config import load_repository

    repository = load_repository(repository_path)
    out = {}
    for name in models:
        spec = repository.get(name)
        replica_threads = spec.deployment.threads  # what the served replicas run with
        if args.raw_layouts:
            layouts = parse_layouts(args.raw_layouts)
        else:
            layouts = (
                [(1, replica_threads)]
                if args.quick
                else default_layouts(os.cpu_count() or 1, replica_threads)
            )
        config = RawConfig(
            repository=repository_path,
            model=name,
            images=tuple(images),
            batch_sizes=raw_batch_sizes(args.raw_batch_sizes, spec.batching.max_batch_size),
            duration_s=args.raw_duration_s,
            min_iterations=2 if args.quick else 3,
            warmup_iterations=1 if args.quick else 2,
        )
        out[name] = measure_model(config, layouts, replica_threads)
        b = out[name]["best"]
        log(f"  raw {name}: best {b['images_per_s']:.2f} img/s ({b['layout']}, batch {b['batch_size']})")
    return out
