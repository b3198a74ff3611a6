"""Headless locust run against a running service (``make loadtest``), with a short summary.

    python loadtests/run.py --users 8 --spawn-rate 2 --duration 60 \\
        --host http://127.0.0.1:8000 --grpc-target 127.0.0.1:9000

Runs ``locust -f loadtests/locustfile.py --headless -u N -r R -t Ds --host URL --csv PREFIX`` and
writes into ``--out-dir`` (default ``loadtests/results/tmp/locust-<time>/``, gitignored): locust's
CSVs (``locust_stats.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``,
``locust_stats_history.csv``), ``latency.json`` (exact percentiles and server stage timings from the
locustfile) and ``summary.json`` / ``summary.md``.

Exit status: 0 when every request succeeded; 1 when any request failed (unless
``--allow-failures``); 2 when nothing was measured or locust itself failed.
Arguments after ``--`` go to locust unchanged (e.g. ``-- --csv-full-history``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests.common import DEFAULT_IMAGE_SIZES, TMP_DIR  # noqa: E402
from loadtests.locust_summary import markdown, summarize  # noqa: E402

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
USER_CLASSES = {"http": "SegmentHttpUser", "grpc": "SegmentGrpcUser"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--users", type=int, default=8, help="concurrent users (default 8)")
    p.add_argument("-r", "--spawn-rate", type=float, default=2.0, help="users started per second")
    p.add_argument("-t", "--duration", type=float, default=60.0, help="run time in seconds")
    p.add_argument("--host", default="http://127.0.0.1:8000", help="HTTP base URL of the service")
    p.add_argument("--grpc-target", default="127.0.0.1:9000", help="host:port of the gRPC proxy")
    p.add_argument("--protocols", default="http,grpc", help="http, grpc or both (users split evenly)")
    p.add_argument("--models", default="", help="weighted models, e.g. unet-shapes:3,panoptic-shapes:1")
    p.add_argument("--image-sizes", default=DEFAULT_IMAGE_SIZES, help="weighted WIDTHxHEIGHT sizes")
    p.add_argument("--synthetic-per-size", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-ms", type=float, default=0.0, help="think time per user between requests")
    p.add_argument("--request-timeout-s", type=float, default=60.0)
    p.add_argument("--out-dir", type=Path, default=None, help="where the CSVs and the summary go")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even when requests failed")
    p.add_argument("--ready-timeout-s", type=float, default=30.0, help="wait this long for /readyz first")
    p.add_argument("locust_args", nargs=argparse.REMAINDER, help="after --: passed to locust")
    args = p.parse_args(argv)
    protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    unknown = set(protocols) - set(USER_CLASSES)
    if not protocols or unknown:
        p.error(f"--protocols: use http, grpc or http,grpc (got {args.protocols!r})")
    args.protocols = protocols
    if args.locust_args and args.locust_args[0] == "--":
        args.locust_args = args.locust_args[1:]
    if args.out_dir is None:
        args.out_dir = TMP_DIR / f"locust-{datetime.now():%Y%m%d-%H%M%S}"
    return args


def locust_command(args: argparse.Namespace, prefix: Path, latency_json: Path) -> list[str]:
    options = {
        "-u": args.users,
        "-r": args.spawn_rate,
        "-t": f"{max(1, round(args.duration))}s",
        "--host": args.host,
        "--csv": prefix,
        # Let a request in flight at the end finish instead of killing it half-way.
        "--stop-timeout": int(args.request_timeout_s),
        "--grpc-target": args.grpc_target,
        "--image-sizes": args.image_sizes,
        "--synthetic-per-size": args.synthetic_per_size,
        "--seed": args.seed,
        "--wait-ms": args.wait_ms,
        "--request-timeout-s": args.request_timeout_s,
        "--latency-json": latency_json,
        **({"--models": args.models} if args.models else {}),
    }
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary"]
    for flag, value in options.items():
        command += [flag, str(value)]
    return [*command, *args.locust_args, *(USER_CLASSES[p] for p in args.protocols)]


def _not_ready(args: argparse.Namespace) -> str | None:
    """None when the service answers ready (over HTTP when it is used, else gRPC health), else why not."""
    if "http" in args.protocols:
        import httpx

        r = httpx.get(f"{args.host.rstrip('/')}/readyz", timeout=10)
        return None if r.status_code == 200 else f"HTTP {r.status_code}"
    from loadtests.client import GrpcClient

    with GrpcClient(args.grpc_target, timeout_s=10) as client:
        return None if client.ready() else "gRPC health: not SERVING"


def wait_ready(args: argparse.Namespace) -> str | None:
    """None once the service is ready; the last reason it was not after ``--ready-timeout-s``."""
    deadline = time.monotonic() + args.ready_timeout_s
    while True:
        try:
            last = _not_ready(args)
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if last is None or time.monotonic() >= deadline:
            return last
        time.sleep(1)


def exit_status(summary: dict, returncode: int, allow_failures: bool) -> int:
    """0 all succeeded; 1 failures or exceptions in users (unless allowed); 2 nothing measured."""
    if summary["requests"] == 0 or returncode not in (0, 1):
        print(f"nothing measured or locust failed (exit code {returncode})", file=sys.stderr)
        return 2
    exceptions = sum(e["count"] for e in summary["exceptions"])
    if (summary["failures"] or exceptions) and not allow_failures:
        print(f"{summary['failures']} request(s) failed, {exceptions} exception(s) in users", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prefix, latency_json = args.out_dir / "locust", args.out_dir / "latency.json"
    not_ready = wait_ready(args)
    if not_ready is not None:
        print(f"the service is not ready ({not_ready}); start it with `make serve`", file=sys.stderr)
        return 2
    command = locust_command(args, prefix, latency_json)
    print("$ " + " ".join(command), flush=True)
    returncode = subprocess.run(command, cwd=ROOT).returncode
    summary = summarize(args, prefix, latency_json, returncode)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out_dir / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"results in {args.out_dir}")
    return exit_status(summary, returncode, args.allow_failures)


if __name__ == "__main__":
    sys.exit(main())
