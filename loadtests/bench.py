"""The benchmark (``make bench``): the raw model vs the same model served, on one machine, in one run.

    python loadtests/bench.py                      # full run (about 15-25 min on 2 cores)
    python loadtests/bench.py --quick              # smoke run, results under loadtests/results/tmp/
    python loadtests/bench.py --models unet-shapes --concurrency 1,4,16,64 --duration-s 30 \\
        --protocols http,grpc --label c2-standard-2

1. Raw: for each model (and the null model), the segmenter's work per batch (normalize + forward +
   restore/argmax, ``loadtests/raw.py``) at batch sizes 1..max, in several process x thread layouts
   (spawned processes); "best raw" is the fastest layout and batch size.
2. Served: starts Ray and Serve on free ports (``service.local.start_local`` + ``deploy``) with a
   temporary repository holding the chosen models plus a ``null`` model (architecture null: a 1x1
   conv, the same pipeline with near-zero compute), then a closed-loop client
   (``loadtests/closed_loop.py``) measures throughput and exact p50/p95/p99 over HTTP and gRPC at each
   concurrency, after a warm-up.
3. Reads the mean batch size from the metrics endpoint and aggregates the answers' per-stage
   ``timings_ms``.
4. Writes ``loadtests/results/<date>-<machine>.json``, ``.md`` and ``-{throughput,p99,ratio}.png``.

Models whose weights are missing are skipped (and listed in the report). ``--url``/``--grpc-target``
measure an already running service instead of starting one (no null model unless it serves one).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests import raw, report  # noqa: E402
from loadtests.common import (  # noqa: E402
    DEFAULT_REPOSITORY,
    RESULTS_DIR,
    TMP_DIR,
    make_images,
    parse_int_list,
    select_models,
    servable_models,
)
from loadtests.served import (  # noqa: E402
    NULL_MODEL,
    LocalService,
    log,
    run_served,
    served_models_of,
    write_repository,
)

FULL = {
    "concurrency": "1,4,16,64",
    "duration_s": 20.0,
    "warmup_s": 5.0,
    "raw_duration_s": 5.0,
    "raw_batch_sizes": "",  # powers of two up to each model's max_batch_size, and the max
    "raw_layouts": "",  # default_layouts(cpus, replica threads)
    "metrics_settle_s": 15.0,
}
QUICK = {
    "concurrency": "1,4",
    "duration_s": 2.0,
    "warmup_s": 0.5,
    "raw_duration_s": 0.3,
    "raw_batch_sizes": "1,2",
    "raw_layouts": "",  # only the replicas' own layout in quick mode
    "metrics_settle_s": 0.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per phase")
    p.add_argument("--models", default="", help="comma-separated models (default: every servable one)")
    p.add_argument("--no-null", action="store_true", help="leave out the null model")
    p.add_argument("--protocols", default="http,grpc")
    p.add_argument("--concurrency", default=None, help="closed-loop concurrency levels (1,4,16,64)")
    p.add_argument("--duration-s", type=float, default=None, help="measured seconds per served point (20)")
    p.add_argument("--warmup-s", type=float, default=None, help="unmeasured seconds before each point (5)")
    p.add_argument("--raw-duration-s", type=float, default=None, help="seconds per raw batch size (5)")
    p.add_argument("--raw-batch-sizes", default=None, help="e.g. 1,2,4,8 or 1-8 (default 1,2,4,..,max)")
    p.add_argument("--raw-layouts", default=None, help="processes x threads, e.g. 1x2,2x1 (default: auto)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw measurement")
    p.add_argument("--no-served", action="store_true", help="skip the served measurement")
    p.add_argument("--image-size", type=int, default=256, help="side of the square test images")
    p.add_argument("--images", type=int, default=8, help="synthetic images (plus 3 real photographs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    p.add_argument("--verify-png", action="store_true", help="decode every mask PNG (client CPU)")
    p.add_argument("--metrics-settle-s", type=float, default=None, help="wait before the last scrape (15)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--num-cpus", type=float, default=None, help="Ray's logical CPUs (default: enough)")
    p.add_argument("--url", default=None, help="measure a running service at this HTTP URL instead")
    p.add_argument("--grpc-target", default=None, help="... and this gRPC target")
    p.add_argument("--metrics-url", default=None, help="... and this metrics endpoint")
    p.add_argument("--out-dir", type=Path, default=None, help="default loadtests/results (quick: .../tmp)")
    p.add_argument("--label", default=None, help="machine name in the file name (default: host name)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary model repository")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.concurrency = parse_int_list(args.concurrency)
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    if not args.protocols or set(args.protocols) - {"http", "grpc"}:
        p.error("--protocols: http, grpc or http,grpc")
    if args.url is None and args.grpc_target is not None:
        p.error("--grpc-target needs --url (a running service)")
    if args.out_dir is None:
        args.out_dir = TMP_DIR if args.quick else RESULTS_DIR
    return args


# --- machine facts ------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except Exception:
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_meta(label: str | None) -> dict[str, Any]:
    import ray
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    host = socket.gethostname()
    return {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "started": datetime.now().isoformat(timespec="seconds"),
        "machine": re.sub(r"[^A-Za-z0-9_.-]+", "-", label or host).strip("-") or "machine",
        "hostname": host,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
    }


def result_stem(out_dir: Path, meta: dict[str, Any]) -> Path:
    stem = out_dir / f"{meta['date']}-{meta['machine']}"
    if (out_dir / f"{stem.name}.json").exists():  # never overwrite an earlier run of the same day
        stem = out_dir / f"{stem.name}-{datetime.now():%H%M%S}"
    return stem


# --- raw ------------------------------------------------------------------------------------------------


def raw_batch_sizes(text: str, max_batch_size: int) -> tuple[int, ...]:
    if text:
        return tuple(parse_int_list(text))
    sizes = {max_batch_size}
    b = 1
    while b < max_batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


def run_raw(args, repository_path: Path, models: list[str], images) -> dict[str, Any]:
    from service.config import load_repository

    repository = load_repository(repository_path)
    cpus = os.cpu_count() or 1
    out = {}
    for name in models:
        spec = repository.get(name)
        replica_threads = spec.deployment.threads  # what the served replicas run with
        if args.raw_layouts:
            layouts = raw.parse_layouts(args.raw_layouts)
        elif args.quick:
            layouts = [(1, replica_threads)]
        else:
            layouts = raw.default_layouts(cpus, replica_threads)
        config = raw.RawConfig(
            repository=repository_path,
            model=name,
            images=tuple(images),
            batch_sizes=raw_batch_sizes(args.raw_batch_sizes, spec.batching.max_batch_size),
            duration_s=args.raw_duration_s,
            min_iterations=2 if args.quick else 3,
            warmup_iterations=1 if args.quick else 2,
        )
        out[name] = raw.measure_model(config, layouts, replica_threads, log=log)
        b = out[name]["best"]
        log(f"  raw {name}: best {b['images_per_s']:.2f} img/s ({b['layout']}, batch {b['batch_size']})")
    return out


# --- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    requested = [m.strip() for m in args.models.split(",") if m.strip()]
    if NULL_MODEL in requested and not args.url:  # "--models null": the null model (alone, if only it)
        args.no_null = False
    null_only = requested == [NULL_MODEL] and not args.url
    if not args.url:
        requested = [m for m in requested if m != NULL_MODEL]
    available, skipped = servable_models(args.repository)
    if args.url:  # a running service: what it serves decides
        served_now = served_models_of(args.url)
        available = [m for m in available if m in served_now] + [m for m in served_now if m == NULL_MODEL]
    models, skipped = ([], {}) if null_only else select_models(requested, available, skipped)
    if args.quick and not requested:
        models = models[:1]
    if not models and (args.no_null or args.url):
        log(f"no model to benchmark (requested {requested or 'all'}; skipped {skipped})")
        return 2
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")

    meta = machine_meta(args.label)
    tmp = TMP_DIR / f"bench-{os.getpid()}"
    service: LocalService | None = None
    try:
        if args.url:
            repository_path = args.repository
            null_name = None
        else:
            repository_path, null_name = write_repository(args.repository, models, not args.no_null, tmp)
        all_models = models + ([null_name] if null_name else [])
        images = make_images((args.image_size, args.image_size), seed=args.seed, synthetic=args.images)
        log(f"models {all_models}; {len(images)} images of {args.image_size}x{args.image_size}")

        raw_results: dict[str, Any] = {}
        if not args.no_raw:
            log("raw model ...")
            raw_models = [m for m in all_models if m != NULL_MODEL or not args.url]
            raw_results = run_raw(args, repository_path, raw_models, images)

        served: list[dict] = []
        metrics: dict[str, Any] = {}
        if not args.no_served:
            if args.url:
                url, grpc_target, metrics_url = args.url, args.grpc_target, args.metrics_url
                if "grpc" in args.protocols and not grpc_target:
                    log("no --grpc-target: measuring HTTP only")
                    args.protocols = [p for p in args.protocols if p != "grpc"]
            else:
                service = LocalService(repository_path, all_models, args.num_cpus)
                url, grpc_target, metrics_url = service.url, service.grpc_target, service.metrics_url
            log("served (closed loop) ...")
            served, metrics = run_served(args, url, grpc_target, metrics_url, all_models, images)

        results = {
            "meta": meta,
            "config": {
                "quick": args.quick,
                "models": all_models,
                "null_model": null_name,
                "protocols": args.protocols,
                "concurrency": args.concurrency,
                "duration_s": args.duration_s,
                "warmup_s": args.warmup_s,
                "raw_duration_s": args.raw_duration_s,
                "image_size": args.image_size,
                "seed": args.seed,
                "timeout_s": args.timeout_s,
                "external_service": args.url,
            },
            "skipped_models": skipped,
            "images": [
                {"name": i.name, "size": i.size_label, "bytes": len(i.data), "content_type": i.content_type}
                for i in images
            ],
            "raw": raw_results,
            "served": served,
            "metrics": metrics,
            "elapsed_s": time.monotonic() - started,
        }
        paths = report.write(results, result_stem(args.out_dir, meta))
    finally:
        if service is not None:
            service.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    log("")
    log(Path(paths["md"]).read_text().split("## Raw model")[0].rstrip())
    log("")
    log("written: " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C, so Serve and Ray are shut down and the temporary repository removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
