"""The benchmark (``make bench``): the raw model, peer serving stacks and our service, with the same
model, images and load generator, on one machine, in one run.

    python loadtests/bench.py                      # full run (about 30-40 min on 2 cores)
    python loadtests/bench.py --quick              # smoke run, results under loadtests/results/tmp/
    python loadtests/bench.py --models unet-shapes --concurrency 1,4,16,64 --duration-s 30 \\
        --protocols http,grpc --peers litserve,fastapi --label c2-standard-2

1. Raw (``raw_phase.py``): each model's segmenter work per batch at batch sizes 1..max, in several
   process x thread layouts; "best raw" is the fastest layout and batch size.
2. Peers (``peers/``): LitServe, plain FastAPI and a minimal Ray Serve app serving the same model
   with the service's own per-request functions, each started on a free port, its label maps
   checked against the model called directly, then swept with the closed-loop client.
3. Ours (``served.py``): Ray and Serve on free ports with a temporary repository holding the chosen
   models plus a ``null`` model (a 1x1 conv: the same pipeline with near-zero compute), label maps
   checked, then the sweep over HTTP (PNG body, as the peers), HTTP with the JSON answer, and gRPC;
   batch sizes from the metrics endpoint.
   Then the large-image point (``large.py``): one ``--large-image`` picture (4096 px) through a tiled
   model at full resolution, served over HTTP vs the same tiling in this process, in megapixels/s.
4. Writes ``loadtests/results/<date>-<machine>.json``, ``.md`` and PNG plots (``report.py``).

Models whose weights are missing are skipped (and listed in the report). ``--url``/``--grpc-target``
measure an already running service instead of starting one (no null model unless it serves one).
Exit status 1 when any system's label maps differ from the direct call (the run compared unequal work).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests import labelmaps, report  # noqa: E402
from loadtests.bench_args import Plan, parse_args, plan_models  # noqa: E402
from loadtests.common import TMP_DIR, log, servable_models, split_list  # noqa: E402
from loadtests.images import describe, make_images  # noqa: E402
from loadtests.machine import machine_meta, result_stem  # noqa: E402
from loadtests.peers.phase import run_peers  # noqa: E402
from loadtests.raw_phase import run_raw  # noqa: E402
from loadtests.repository import NULL_MODEL, write_repository  # noqa: E402
from loadtests.served import run_ours, served_models_of  # noqa: E402


def available_models(args) -> tuple[list[str], dict[str, str]]:
    """Servable models of the repository; with ``--url``, those the running service serves."""
    available, skipped = servable_models(args.repository)
    if args.url:
        served_now = served_models_of(args.url)
        available = [m for m in available if m in served_now] + [m for m in served_now if m == NULL_MODEL]
    return available, skipped


def peer_models(args, repository: Path, models: list[str]) -> list[str]:
    """``--peer-models``, else every semantic model of the run (the null model included)."""
    from service.config import load_repository

    if args.peer_models:
        return split_list(args.peer_models)
    specs = {spec.name: spec for spec in load_repository(repository).models}
    return [m for m in models if m in specs and specs[m].task == "semantic"]


def run_phases(args, plan: Plan, tmp: Path) -> dict[str, Any]:
    """Raw, peers, ours: the measured sections of the results."""
    if args.url:
        repository, null_name = args.repository, None
    else:
        repository, null_name = write_repository(
            args.repository, plan.models, plan.with_null, tmp, args.gpus_per_replica
        )
    models = plan.models + ([null_name] if null_name else [])
    images = make_images((args.image_size, args.image_size), seed=args.seed, synthetic=args.images)
    log(f"models {models}; {len(images)} images of {args.image_size}x{args.image_size}")
    peers = peer_models(args, repository, models) if args.peers else []
    checked = set(peers) | (set() if args.url or args.no_served else set(models))
    references = {m: labelmaps.direct(repository, m, images) for m in models if m in checked}
    out: dict[str, Any] = {"models": models, "null_name": null_name, "images": images, "peer_models": peers}
    if not args.no_raw:
        log("raw model ...")
        out["raw"] = run_raw(args, repository, [m for m in models if m != NULL_MODEL or not args.url], images)
    if peers:
        log(f"peers {args.peers} on {peers} ...")
        out["peers"] = run_peers(args, repository, peers, images, references, tmp)
    if not args.no_served:
        log("ours (closed loop) ...")
        out.update(run_ours(args, repository, models, images, references))
    return out


def results_of(args, plan: Plan, measured: dict[str, Any], meta: dict, started: float) -> dict[str, Any]:
    config = {
        key: getattr(args, key)
        for key in ("quick", "protocols", "concurrency", "duration_s", "warmup_s", "raw_duration_s")
    }
    config.update(image_size=args.image_size, seed=args.seed, timeout_s=args.timeout_s)
    config.update(large_image=args.large_image)
    config.update(models=measured["models"], null_model=measured["null_name"], external_service=args.url)
    config.update(peers=args.peers, peer_models=measured["peer_models"], peer_args=args.peer_args)
    results = {
        "meta": meta,
        "config": config,
        "skipped_models": plan.skipped,
        "images": describe(measured["images"]),
        "raw": measured.get("raw", {}),
        "peers": measured.get("peers", []),
        "served": measured.get("served", []),
        "metrics": measured.get("metrics", {}),
        "label_maps": measured.get("label_maps", {}),
        "idle_cpu_ms_per_s": measured.get("idle_cpu_ms_per_s"),
        "large": measured.get("large"),
        "elapsed_s": time.monotonic() - started,
    }
    results["failures"] = labelmaps.failures(results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__ or "")
    started = time.monotonic()
    plan = plan_models(args, *available_models(args))
    if not plan.models and not plan.with_null:
        log(f"no model to benchmark (requested {args.models or 'all'}; skipped {plan.skipped})")
        return 2
    for name, why in plan.skipped.items():
        log(f"skipping {name}: {why}")
    meta = machine_meta(args.label)
    tmp = TMP_DIR / f"bench-{os.getpid()}"
    try:
        results = results_of(args, plan, run_phases(args, plan, tmp), meta, started)
        paths = report.write(results, result_stem(args.out_dir, meta))
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    log("\n" + report.summary(Path(paths["md"]).read_text()) + "\n")
    log("written: " + ", ".join(paths.values()))
    if results["failures"]:
        log("FAILED: " + "; ".join(results["failures"][:10]))
        return 1
    return 0


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C, so Serve and Ray are shut down and the temporary repository removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
