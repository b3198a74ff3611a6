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
import csv
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from loadtests.common import DEFAULT_IMAGE_SIZES, STAGES, TMP_DIR, fmt  # noqa: E402

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
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{max(1, round(args.duration))}s",
        "--host",
        args.host,
        "--csv",
        str(prefix),
        "--only-summary",
        # Let a request in flight at the end finish instead of killing it half-way.
        "--stop-timeout",
        str(int(args.request_timeout_s)),
        "--grpc-target",
        args.grpc_target,
        "--image-sizes",
        args.image_sizes,
        "--synthetic-per-size",
        str(args.synthetic_per_size),
        "--seed",
        str(args.seed),
        "--wait-ms",
        str(args.wait_ms),
        "--request-timeout-s",
        str(args.request_timeout_s),
        "--latency-json",
        str(latency_json),
        *(["--models", args.models] if args.models else []),
        *args.locust_args,
        *(USER_CLASSES[p] for p in args.protocols),
    ]


def wait_ready(args: argparse.Namespace) -> str | None:
    """None once the service answers ready (over HTTP when it is used, else gRPC health)."""
    deadline = time.monotonic() + args.ready_timeout_s
    last = "not tried"
    while True:
        try:
            if "http" in args.protocols:
                import httpx

                r = httpx.get(f"{args.host.rstrip('/')}/readyz", timeout=10)
                if r.status_code == 200:
                    return None
                last = f"HTTP {r.status_code}"
            else:
                from segserve_client.grpc import GrpcClient

                with GrpcClient(args.grpc_target, timeout_s=10) as client:
                    if client.ready():
                        return None
                last = "gRPC health: not SERVING"
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            return last
        time.sleep(1)


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_stats(prefix: Path) -> list[dict[str, Any]]:
    """Rows of ``<prefix>_stats.csv`` with numbers as floats (locust percentiles are rounded)."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append({k: (v if k in ("Type", "Name") else _number(v)) for k, v in row.items()})
    return out


def read_failures(prefix: Path) -> list[dict[str, Any]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            {
                "type": r.get("Method", ""),
                "name": r.get("Name", ""),
                "error": r.get("Error", ""),
                "occurrences": int(r.get("Occurrences") or 0),
            }
            for r in csv.DictReader(f)
        ]


def read_exceptions(prefix: Path) -> list[dict[str, Any]]:
    """Errors raised inside the users (bugs in the locustfile, not failed requests)."""
    path = Path(f"{prefix}_exceptions.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            {"count": int(r.get("Count") or 0), "message": r.get("Message", "")} for r in csv.DictReader(f)
        ]


def _row(csv_row: dict[str, Any] | None, exact: dict[str, Any] | None, duration_s: float) -> dict[str, Any]:
    """One stats row: counts and percentiles from the exact record when there is one (locust's CSV is
    written before the last requests finish, and rounds its percentiles), locust's figures beside."""
    c = csv_row or {}
    e = exact or {}
    row: dict[str, Any] = {
        "type": e.get("type", c.get("Type") or ""),
        "name": e.get("name", c.get("Name")),
        # requests = successes + failures, as in locust's tables; latencies are of the successes.
        "requests": int(e.get("requests", 0)) + int(e.get("failures", 0))
        if exact
        else int(c.get("Request Count") or 0),
        "failures": int(e.get("failures", 0)) if exact else int(c.get("Failure Count") or 0),
    }
    if exact:  # over the whole run time, ramp-up included
        row["requests_per_s"] = row["requests"] / duration_s if duration_s else None
        row.update({k: e.get(k) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")})
        if e.get("stage_mean_ms"):
            row["stage_mean_ms"] = e["stage_mean_ms"]
        if e.get("mean_batch_size"):
            row["mean_batch_size"] = e["mean_batch_size"]
    else:
        row.update(
            requests_per_s=c.get("Requests/s"),
            mean_ms=c.get("Average Response Time"),
            max_ms=c.get("Max Response Time"),
        )
    if c:
        row["locust"] = {
            "requests": int(c.get("Request Count") or 0),
            "failures": int(c.get("Failure Count") or 0),
            "requests_per_s": c.get("Requests/s"),
            **{f"p{q}_ms": c.get(f"{q}%") for q in (50, 95, 99)},
        }
    return row


def summarize(args: argparse.Namespace, prefix: Path, latency_json: Path, returncode: int) -> dict[str, Any]:
    stats = {(s["Type"] or "", s["Name"]): s for s in read_stats(prefix)}
    exact = json.loads(latency_json.read_text()) if latency_json.exists() else {"rows": [], "total": {}}
    exact_rows = {(r["type"], r["name"]): r for r in exact["rows"]}
    keys = sorted((set(stats) | set(exact_rows)) - {("", "Aggregated")}, key=lambda k: (k[1], k[0]))
    rows = [_row(stats.get(k), exact_rows.get(k), args.duration) for k in keys]
    total = _row(stats.get(("", "Aggregated")), exact["total"] or None, args.duration)
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "host": args.host,
        "grpc_target": args.grpc_target,
        "protocols": args.protocols,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "models": args.models or "(all served)",
        "image_sizes": args.image_sizes,
        "seed": args.seed,
        "locust_exit_code": returncode,
        "requests": total["requests"],
        "failures": total["failures"],
        "total": total,
        "rows": rows,
        "failure_reasons": read_failures(prefix),
        "exceptions": read_exceptions(prefix),
        "csv_prefix": str(prefix),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Load test {summary['started']}",
        "",
        f"{summary['users']} users ({', '.join(summary['protocols'])}), "
        f"spawn rate {summary['spawn_rate']}/s, "
        f"{summary['duration_s']:g} s against {summary['host']} / {summary['grpc_target']}; "
        f"models {summary['models']}; sizes {summary['image_sizes']}; seed {summary['seed']}.",
        "",
        f"**{summary['requests']} requests, {summary['failures']} failed.**",
        "",
        "| type | name | requests | failures | req/s | mean ms | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [*summary["rows"], summary["total"]]:
        lines.append(
            f"| {r['type']} | {r['name']} | {r['requests']} | {r['failures']} "
            f"| {fmt(r['requests_per_s'], 2)} "
            f"| {fmt(r.get('mean_ms'))} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} "
            f"| {fmt(r.get('p99_ms'))} | {fmt(r.get('max_ms'))} |"
        )
    lines += [
        "",
        "Counts and percentiles are exact (every response time, recorded by the locustfile); locust's "
        "own CSV rounds percentiles to two digits and misses the requests that finish after it is written.",
    ]
    stage_rows = [r for r in summary["rows"] if r.get("stage_mean_ms")]
    if stage_rows:
        stages = STAGES
        lines += [
            "",
            "Mean server-side stage timings (ms, from the answers' `timings_ms`):",
            "",
            "| type | name | " + " | ".join(stages) + " | batch |",
            "|---|---|" + "---:|" * (len(stages) + 1),
        ]
        for r in stage_rows:
            t = r["stage_mean_ms"]
            cells = " | ".join(fmt(t.get(s)) for s in stages)
            lines.append(f"| {r['type']} | {r['name']} | {cells} | {fmt(r.get('mean_batch_size'), 2)} |")
    if summary["failure_reasons"]:
        lines += ["", "Failures:", "", "| type | name | error | count |", "|---|---|---|---:|"]
        for f in summary["failure_reasons"]:
            error = f["error"].replace("|", "\\|")
            lines.append(f"| {f['type']} | {f['name']} | {error} | {f['occurrences']} |")
    if summary["exceptions"]:
        lines += ["", "Exceptions raised in the users:", ""]
        lines += [f"* {e['count']} x {e['message']}" for e in summary["exceptions"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prefix = args.out_dir / "locust"
    latency_json = args.out_dir / "latency.json"
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
    if summary["requests"] == 0 or returncode not in (0, 1):
        print(f"nothing measured or locust failed (exit code {returncode})", file=sys.stderr)
        return 2
    exceptions = sum(e["count"] for e in summary["exceptions"])
    if (summary["failures"] or exceptions) and not args.allow_failures:
        print(f"{summary['failures']} request(s) failed, {exceptions} exception(s) in users", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
