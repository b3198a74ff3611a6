"""Large images: the benchmark's large-image point, and the quality study behind the tiling claim.

The benchmark point (``make bench``, ``--large-image 4096``): one picture of that side, full of shapes at
the training scale (``images.shapes_scene``), segmented at full resolution by a tiled model

* raw: the service's tiling in this process, without the service: the model's worker
  (``service.worker.ModelWorker``, its batcher, tiles, blending), from decoded pixels to the label map;
* served: the same picture as a PNG over HTTP to the running service (decode, tiles, blending, encode,
  the answer as a PNG body), one request at a time;

as megapixels per second, side by side in one run, and how far the served label map agrees with the raw.

The quality study (``python loadtests/large.py quality --size 6000x4000``): mIoU against the ground truth
of the tiled label map, of whole-image inference (one forward over the whole picture) and of today's
letterbox to the model's input size; the tiled map's agreement with the whole-image one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests.common import DEFAULT_REPOSITORY, fmt, log, md_table  # noqa: E402
from loadtests.images import shapes_scene  # noqa: E402


def tiled_model(repository: Path, models: list[str]) -> str | None:
    """The first of ``models`` whose entry tiles large images."""
    from service.config import load_repository

    repo = load_repository(repository)
    return next((m for m in models if (s := repo.get(m)) is not None and s.input.tile is not None), None)


def worker_for(repository: Path, model: str):
    """The model's worker in this process (no codec), with its replicas' torch threads."""
    from service.config import load_repository
    from service.models.inference import configure_threads
    from service.worker import ModelWorker

    repo = load_repository(repository)
    spec = repo.get(model)
    configure_threads(spec.deployment.threads)
    return ModelWorker(spec, repo.weights_path(spec) if spec.weights else None)


def raw_tiled(worker, image: np.ndarray, repeats: int) -> dict[str, Any]:
    """Seconds per picture through the worker's tiling (best of ``repeats``) and the label map."""
    from service.imaging.tiling import scale_for_tiles, wants_tiles
    from service.types import PreparedImage, SegmentOptions

    spec = worker.spec
    if not wants_tiles(*image.shape[:2], spec.input):
        raise ValueError(f"{spec.name} does not tile a {image.shape[1]}x{image.shape[0]} picture")
    pixels, geometry = scale_for_tiles(image, spec.input)
    prepared = PreparedImage(pixels, geometry, SegmentOptions(model=spec.name), tiled=True)

    async def repeat() -> tuple[list[float], Any]:
        times, segmentation = [], None
        for _ in range(repeats):  # one event loop: the worker's batcher lives on it
            t0 = time.perf_counter()
            segmentation = await worker.segment(prepared)
            times.append(time.perf_counter() - t0)
        return times, segmentation

    times, segmentation = asyncio.run(repeat())
    return {"seconds": min(times), "labels": segmentation.labels, "timings_ms": segmentation.timings_ms}


def served_tiled(url: str, model: str, body: bytes, repeats: int, timeout_s: float) -> dict[str, Any]:
    """Seconds per picture over HTTP (best of ``repeats``), and the label map of the last answer."""
    import httpx

    from service.imaging.encode import decode_label_png

    times, labels = [], None
    headers = {"content-type": "image/png", "accept": "image/png"}
    with httpx.Client(timeout=timeout_s) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = client.post(f"{url}/v1/models/{model}/segment", content=body, headers=headers)
            times.append(time.perf_counter() - t0)
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.text[:300]}", "seconds": times[-1]}
            labels = decode_label_png(r.content)
    return {"seconds": min(times), "labels": labels}


def run_large(url: str, repository: Path, model: str, side: int, repeats: int, timeout_s: float) -> dict:
    """The benchmark's large-image point: raw and served megapixels per second, in this run."""
    from loadtests.client import encode_array
    from service.imaging.tiling import plan_tiling, scaled_size

    image, _ = shapes_scene(side, side, seed=11)
    body = encode_array(image)
    worker = worker_for(repository, model)
    spec = worker.spec
    plan = plan_tiling(
        image.shape[:2], scaled_size(side, side, spec.input.tile), spec.input, spec.num_classes
    )
    log(f"large image: {side}x{side} ({len(body) / 2**20:.1f} MiB PNG), {model}, {plan.forwards} tiles ...")
    served = served_tiled(url, model, body, repeats, timeout_s)
    raw = raw_tiled(worker, image, repeats)
    megapixels = side * side / 1e6
    out = {
        "model": model,
        "size": f"{side}x{side}",
        "png_bytes": len(body),
        "tiles": plan.forwards,
        "tile": spec.input.tile.model_dump(),
        "repeats": repeats,
        "raw_s": raw["seconds"],
        "raw_mp_per_s": megapixels / raw["seconds"],
        "raw_timings_ms": raw["timings_ms"],
        "served_s": served["seconds"],
    }
    if "error" in served:
        out["served_error"] = served["error"]
        return out
    out["served_mp_per_s"] = megapixels / served["seconds"]
    out["agreement"] = float((served["labels"] == raw["labels"]).mean())
    return out


def section(large: dict[str, Any] | None) -> list[str]:
    """The report's section for the large-image point."""
    if not large:
        return []
    tile = large["tile"]
    lines = [
        "## Large image (tiled)",
        "",
        f"One {large['size']} picture of training-scale shapes ({large['png_bytes'] / 2**20:.1f} MiB PNG), "
        f"`{large['model']}` at full resolution: {large['tiles']} tiles of {tile['size']} px, overlap "
        f"{tile['overlap']}, margin {tile['margin']}, {tile['blend']} blending, {tile['tiles_per_request']} "
        f"tiles of the request per batch; best of {large['repeats']}. Raw: the model's worker in the "
        "benchmark's process (batcher, tiles, blending; decoded pixels in, label map out). Served: the "
        "PNG over HTTP, the label map as a PNG body (decode and encode included).",
        "",
    ]
    served = large.get("served_mp_per_s")
    rows = [
        ["raw tiled inference", fmt(large["raw_s"], 2), fmt(large["raw_mp_per_s"], 3), "-"],
        [
            "served (HTTP)",
            fmt(large["served_s"], 2),
            fmt(served, 3) if served else large.get("served_error", "-"),
            fmt(served / large["raw_mp_per_s"], 2) if served else "-",
        ],
    ]
    lines += md_table(["path", "s per picture", "megapixels/s", "served / raw"], rows)
    if "agreement" in large:
        lines += ["", f"Served label map equal to the raw one on {large['agreement']:.4%} of pixels."]
    return [*lines, ""]


# --- the quality study ------------------------------------------------------------------------------


def quality(repository: Path, model: str, height: int, width: int, seed: int) -> dict[str, Any]:
    """mIoU of tiled, whole-image and letterboxed inference on one shapes scene, and their agreement."""
    import torch

    from service.config import load_repository
    from service.imaging.geometry import fit_to_policy
    from service.imaging.restore import restore_labels
    from service.models.registry import normalize, select_output
    from tests.tiling_helpers import miou, tiled_labels, whole_labels, with_tile  # the tests' references

    torch.set_num_threads(1)
    repo = load_repository(repository)
    spec = repo.get(model)
    worker = worker_for(repository, model)
    t0 = time.perf_counter()
    image, truth = shapes_scene(height, width, seed=seed)
    log(f"scene {width}x{height}: {time.perf_counter() - t0:.0f} s")
    tiled_spec = with_tile(spec, **{**spec.input.tile.model_dump(), "min_side": 16})
    t0 = time.perf_counter()
    tiled, request = tiled_labels(tiled_spec, worker.runner, image)
    tiled_s = time.perf_counter() - t0
    pixels, geometry = fit_to_policy(image, spec.input)
    with torch.inference_mode():
        scores = select_output(
            worker.runner.model(normalize(torch.from_numpy(pixels.copy())[None], spec.input)), spec.output
        )
        letterboxed = restore_labels(scores[0], geometry).numpy()
    out = {
        "model": model,
        "size": f"{width}x{height}",
        "tiles": request.plan.forwards,
        "tiled_s": tiled_s,
        "miou_tiled": miou(tiled, truth, spec.num_classes),
        "miou_letterboxed": miou(letterboxed, truth, spec.num_classes),
    }
    log(f"tiled in {tiled_s:.0f} s: mIoU {out['miou_tiled']:.3f}; letterboxed {out['miou_letterboxed']:.3f}")
    t0 = time.perf_counter()
    whole = whole_labels(tiled_spec, worker.runner.model, image)
    out["whole_s"] = time.perf_counter() - t0
    out["miou_whole"] = miou(whole, truth, spec.num_classes)
    out["agreement_tiled_whole"] = float((tiled == whole).mean())
    log(f"whole image in {out['whole_s']:.0f} s: mIoU {out['miou_whole']:.3f}; tiled = whole on "
        f"{out['agreement_tiled_whole']:.4%} of pixels")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="mIoU tiled vs whole-image vs letterboxed on a shapes scene")
    q.add_argument("--model", default="unet-shapes")
    q.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT")
    q.add_argument("--seed", type=int, default=1)
    q.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = quality(args.repository, args.model, height, width, args.seed)
    log(" ".join(f"{k}={fmt(v, 4)}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
