"""What ``run.py`` makes of a locust run: locust's CSVs and the locustfile's exact latencies, merged
into ``summary.json`` and ``summary.md``."""

from __future__ import annotations

import argparse
import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtests.common import STAGES, fmt, md_table


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _csv_rows(prefix: Path, kind: str) -> list[dict[str, str]]:
    path = Path(f"{prefix}_{kind}.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_stats(prefix: Path) -> list[dict[str, Any]]:
    """Rows of ``<prefix>_stats.csv`` with numbers as floats (locust percentiles are rounded)."""
    return [
        {k: (v if k in ("Type", "Name") else _number(v)) for k, v in row.items()}
        for row in _csv_rows(prefix, "stats")
    ]


def read_failures(prefix: Path) -> list[dict[str, Any]]:
    return [
        {
            "type": r.get("Method", ""),
            "name": r.get("Name", ""),
            "error": r.get("Error", ""),
            "occurrences": int(r.get("Occurrences") or 0),
        }
        for r in _csv_rows(prefix, "failures")
    ]


def read_exceptions(prefix: Path) -> list[dict[str, Any]]:
    """Errors raised inside the users (bugs in the locustfile, not failed requests)."""
    return [
        {"count": int(r.get("Count") or 0), "message": r.get("Message", "")}
        for r in _csv_rows(prefix, "exceptions")
    ]


def _exact(row: dict[str, Any], e: dict[str, Any], duration_s: float) -> None:
    """Counts and percentiles from the locustfile's exact record, over the whole run (ramp-up included)."""
    row["requests_per_s"] = row["requests"] / duration_s if duration_s else None
    row.update({k: e.get(k) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")})
    if e.get("stage_mean_ms"):
        row["stage_mean_ms"] = e["stage_mean_ms"]
    if e.get("mean_batch_size"):
        row["mean_batch_size"] = e["mean_batch_size"]


def _row(csv_row: dict[str, Any] | None, exact: dict[str, Any] | None, duration_s: float) -> dict[str, Any]:
    """One stats row: counts and percentiles from the exact record when there is one (locust's CSV is
    written before the last requests finish, and rounds its percentiles), locust's figures beside."""
    c, e = csv_row or {}, exact or {}
    row: dict[str, Any] = {"type": e.get("type", c.get("Type") or ""), "name": e.get("name", c.get("Name"))}
    if exact:  # requests = successes + failures, as in locust's tables; latencies are of the successes
        row.update(
            requests=int(e.get("requests", 0)) + int(e.get("failures", 0)), failures=int(e.get("failures", 0))
        )
        _exact(row, e, duration_s)
    else:
        row.update(requests=int(c.get("Request Count") or 0), failures=int(c.get("Failure Count") or 0))
        row.update(requests_per_s=c.get("Requests/s"), mean_ms=c.get("Average Response Time"))
        row["max_ms"] = c.get("Max Response Time")
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
        "rows": [_row(stats.get(k), exact_rows.get(k), args.duration) for k in keys],
        "failure_reasons": read_failures(prefix),
        "exceptions": read_exceptions(prefix),
        "csv_prefix": str(prefix),
    }


def _stage_lines(rows: list[dict[str, Any]]) -> list[str]:
    timed = [r for r in rows if r.get("stage_mean_ms")]
    if not timed:
        return []
    cells = [
        [
            r["type"],
            r["name"],
            *(fmt(r["stage_mean_ms"].get(s)) for s in STAGES),
            fmt(r.get("mean_batch_size"), 2),
        ]
        for r in timed
    ]
    title = "Mean server-side stage timings (ms, from the answers' `timings_ms`):"
    return ["", title, "", *md_table(["type", "name", *STAGES, "batch"], cells, left=2)]


def _failure_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    if summary["failure_reasons"]:
        rows = [
            [f["type"], f["name"], f["error"].replace("|", "\\|"), f["occurrences"]]
            for f in summary["failure_reasons"]
        ]
        lines += ["", "Failures:", "", *md_table(["type", "name", "error", "count"], rows, left=3)]
    if summary["exceptions"]:
        lines += ["", "Exceptions raised in the users:", ""]
        lines += [f"* {e['count']} x {e['message']}" for e in summary["exceptions"]]
    return lines


def markdown(summary: dict[str, Any]) -> str:
    columns = [
        "type",
        "name",
        "requests",
        "failures",
        "req/s",
        "mean ms",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ]
    rows = [
        [r["type"], r["name"], r["requests"], r["failures"], fmt(r["requests_per_s"], 2)]
        + [fmt(r.get(k)) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")]
        for r in [*summary["rows"], summary["total"]]
    ]
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
        *md_table(columns, rows, left=2),
        "",
        "Counts and percentiles are exact (every response time, recorded by the locustfile); locust's "
        "own CSV rounds percentiles to two digits and misses the requests that finish after it is written.",
    ]
    return "\n".join(lines + _stage_lines(summary["rows"]) + _failure_lines(summary)) + "\n"
