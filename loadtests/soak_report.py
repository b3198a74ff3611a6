"""The soak's verdict and report (JSON with every sample, and a Markdown summary)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests.common import fmt, md_table
from loadtests.soak_load import CANCELLED, Kind, documented, kinds

SUCCESS = ("HTTP 200", "gRPC OK")


def outcome_rows(counts: Counter, kinds: list[Kind]) -> list[dict[str, Any]]:
    by_name = {k.name: k for k in kinds}
    return [
        {"kind": kind, "outcome": outcome, "count": n, "documented": documented(by_name[kind], outcome),
         "segment": by_name[kind].segment}
        for (kind, outcome), n in sorted(counts.items())
    ]  # fmt: skip


def served_share(rows: list[dict[str, Any]]) -> float | None:
    """Segment requests answered 200 / OK, of those that got an answer (cancelled ones left out)."""
    answered = [r for r in rows if r["segment"] and r["outcome"] != CANCELLED]
    total = sum(r["count"] for r in answered)
    ok = sum(r["count"] for r in answered if r["outcome"] in SUCCESS)
    return ok / total if total else None


def verdict(results: dict[str, Any], min_served: float) -> list[str]:
    """What did not hold; empty when everything did."""
    problems = [f"{r['count']} x {r['kind']}: {r['outcome']} (not documented)"
                for r in results["outcomes"] if not r["documented"]]  # fmt: skip
    sent = {r["kind"] for r in results["outcomes"]}
    problems += [f"never sent: {k.name}" for k in kinds() if k.name not in sent]
    share = served_share(results["outcomes"])
    if share is None or share < min_served:
        problems.append(f"segment requests served: {share} (at least {min_served} expected)")
    for s in results["series"]:
        if not s.ok:
            problems.append(f"{s.name} {s.metric}: {fmt(s.slope, 3)} per 1000 requests > bound {s.bound}")
    problems += [f"sampling: {e}" for e in results["sampler_errors"]]
    stop = results.get("stop")
    if stop and (stop["exit_status"] != 0 or stop["processes_left"] or stop["ports_in_use"]):
        problems.append(f"the stop at the end was not clean: {stop}")
    return problems


def _json_ready(results: dict[str, Any]) -> dict[str, Any]:
    return {**results, "series": [asdict(s) for s in results["series"]]}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def markdown(results: dict[str, Any]) -> str:
    run, args = results["run"], results["args"]
    rate = run["requests"] / run["elapsed_s"] if run["elapsed_s"] else 0
    lines = [
        f"# Soak, {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"{args['minutes']:g} min ({args['warmup_s']:g} s warm-up), {args['concurrency']} workers, "
        f"{run['requests']} requests ({rate:.1f}/s), models {', '.join(results['models'])}; "
        f"machine {results['machine']}.",
        "",
        "## Verdict",
        "",
        *([f"* {p}" for p in results["verdict"]] or ["Everything held."]),
        "",
        "## Growth after warm-up (per 1,000 requests, Theil-Sen)",
        "",
    ]
    rows = [(s.name, s.metric, fmt(s.first), fmt(s.last), fmt(s.slope, 3), s.bound, "ok" if s.ok else "OVER")
            for s in results["series"]]  # fmt: skip
    lines += md_table(["process", "quantity", "first", "last", "slope", "bound", ""], rows, left=2)
    if results.get("grown_families"):
        grown = ", ".join(f"{k} +{v}" for k, v in results["grown_families"].items())
        lines += ["", f"Metric families with more series at the end than after warm-up: {grown}"]
    if results["changed_processes"]:
        lines += ["", f"Processes that came or went after warm-up: {', '.join(results['changed_processes'])}"]
    lines += ["", "## Answers", ""]
    rows = [
        (r["kind"], r["outcome"], r["count"], "yes" if r["documented"] else "NO") for r in results["outcomes"]
    ]
    lines += md_table(["request", "outcome", "count", "documented"], rows, left=2)
    if "stop" in results:
        s = results["stop"]
        lines += ["", f"Stop (Ctrl-C): {s['took_s']:.1f} s, exit {s['exit_status']}, processes left "
                  f"{s['processes_left']}, ports in use {s['ports_in_use']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["machine"] = machine()
    stem = out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(_json_ready(results), indent=1, default=str))
    paths[1].write_text(markdown(results))
    return paths


def summary(results: dict[str, Any]) -> str:
    worst = sorted((s for s in results["series"] if s.slope is not None), key=lambda s: s.slope / s.bound)[
        -8:
    ]
    lines = [f"{s.name:40} {s.metric:15} slope {s.slope:9.3f} / 1000 req (bound {s.bound})" for s in worst]
    lines.append(f"requests {results['run']['requests']}; served share {served_share(results['outcomes'])}")
    lines += [f"PROBLEM: {p}" for p in results["verdict"]] or ["soak: everything held"]
    return "\n".join(lines)
