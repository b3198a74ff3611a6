"""The benchmark's report: the headline numbers, ``<stem>.json``, ``<stem>.md`` and PNG plots.

Headline numbers per (model, protocol), see docs/benchmark.md:

* served/raw at saturation: the highest served throughput over the concurrency levels, divided by
  the best raw throughput (best layout and batch size of the model);
* p50 overhead at concurrency 1: served p50 at the lowest concurrency minus the raw batch-1 latency
  with the replicas' thread count;
* where the time goes: the mean server-side stage timings (``timings_ms`` of the answers) plus
  ``hops`` (ingress total minus the stages: calls between deployments) and ``outside`` (client
  latency minus the ingress total: proxy, protocol, (de)serialization).

Ours against the peers (ratios and targets): ``comparison.py`` and ``report_peers.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests import large, plots, proc_cpu, report_peers
from loadtests import report_sections as sections
from loadtests.common import fmt, md_table
from loadtests.comparison import comparison


def _headline_row(points: list[dict[str, Any]], model_raw: dict[str, Any] | None) -> dict[str, Any] | None:
    measured = [p for p in sorted(points, key=lambda p: p["concurrency"]) if p["requests"] > 0]
    if not measured:
        return None
    top, low = max(measured, key=lambda p: p["throughput_rps"]), measured[0]
    row: dict[str, Any] = {
        "served_max_rps": top["throughput_rps"],
        "saturation_concurrency": top["concurrency"],
        "lowest_concurrency": low["concurrency"],
        "p50_low_ms": low["p50_ms"],
        "p99_at_saturation_ms": top["p99_ms"],
        "stages_low_ms": low.get("stage_mean_ms", {}),
        "stages_saturation_ms": top.get("stage_mean_ms", {}),
        "outside_server_low_ms": low.get("outside_server_ms"),
        "mean_batch_at_saturation": top.get("mean_batch_size"),
        "errors": sum(p["errors"] for p in points),
    }
    if model_raw:
        best = model_raw["best"]
        row.update(raw_best_ips=best["images_per_s"], raw_best_layout=best["layout"])
        row.update(
            raw_best_batch=best["batch_size"], served_raw_ratio=top["throughput_rps"] / best["images_per_s"]
        )
        if "batch1_latency_ms" in model_raw and low["p50_ms"] is not None:
            row["raw_batch1_ms"] = model_raw["batch1_latency_ms"]
            row["p50_overhead_low_ms"] = low["p50_ms"] - model_raw["batch1_latency_ms"]
    return row


def headline(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {protocol: numbers}}`` from the raw and served sections."""
    raw, served = results.get("raw", {}), results.get("served", [])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, protocol in dict.fromkeys((p["model"], p["protocol"]) for p in served):
        points = [p for p in served if p["model"] == model and p["protocol"] == protocol]
        row = _headline_row(points, raw.get(model))
        if row is not None:
            out.setdefault(model, {})[protocol] = row
    return out


def cpu_table(served: list[dict[str, Any]]) -> list[str]:
    """CPU ms per request by process role, at each model and protocol's highest-throughput point."""
    tops: dict[tuple[str, str], dict[str, Any]] = {}
    for p in served:
        key = (p["model"], p["protocol"])
        if p.get("cpu_ms_per_request") and (
            key not in tops or p["throughput_rps"] > tops[key]["throughput_rps"]
        ):
            tops[key] = p
    if not tops:
        return []
    roles: dict[str, float] = {}
    for p in tops.values():
        for role, ms in p["cpu_ms_per_request"].items():
            roles[role] = roles.get(role, 0.0) + ms
    columns = [r for r, _ in sorted(roles.items(), key=lambda kv: -kv[1])]
    rows = [
        [model, protocol, p["concurrency"], fmt(p["throughput_rps"], 2)]
        + [fmt(p["cpu_ms_per_request"].get(r)) for r in columns]
        + [fmt(sum(p["cpu_ms_per_request"].values()))]
        for (model, protocol), p in tops.items()
    ]
    title = "## Where the CPU goes (ms of CPU per request, by process, at each line's best throughput)"
    table = md_table(["model", "protocol", "c", "req/s", *columns, "all"], rows, left=2)
    return ["", title, "", *table, "", CPU_NOTE]


CPU_NOTE = (
    "From each process's CPU time before and after the measured window (`loadtests/proc_cpu.py`), "
    "divided by the requests completed in it. Segmenter columns include the model; all segmenter "
    "replicas of a deployment are summed; `load generator` is the benchmark's client."
)


def idle_section(idle: dict[str, float] | None) -> list[str]:
    """Our service's CPU with no load, by process role (its fixed cost on the machine's cores)."""
    if not idle:
        return []
    mine = proc_cpu.of_service(idle)
    rows = [[r, fmt(ms)] for r, ms in mine.items()] + [["all", fmt(sum(mine.values()))]]
    return [
        "",
        "## Idle (ms of CPU per second, by process, before the load)",
        "",
        *md_table(["process", "ms/s"], rows, left=1),
        "",
        "What the running service spends with no request in flight (Ray's own processes, health checks, "
        "metrics): on this machine's cores, a fixed share that requests cannot use.",
    ]


def markdown(results: dict[str, Any]) -> str:
    served, raw = results.get("served", []), results.get("raw", {})
    lines = [*sections.header(results), *sections.headline_table(results.get("headline", {}))]
    lines += report_peers.section(results)
    lines += sections.raw_table(raw, results["config"]["image_size"])
    if served:
        lines += sections.served_table(served, raw) + sections.stages_table(served)
        lines += cpu_table(served) + idle_section(results.get("idle_cpu_ms_per_s"))
        lines += [*sections.errors_list(served), ""]
    lines += sections.batch_section(results.get("metrics", {}).get("mean_batch_size", {}))
    lines += large.section(results.get("large"))
    return "\n".join(lines + sections.plots_section(results.get("plots", [])))


def summary(md: str) -> str:
    """What the benchmark prints at the end: the report up to the raw model's tables."""
    return md.split("## Raw model")[0].rstrip()


def write(results: dict[str, Any], stem: Path) -> dict[str, str]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>-{throughput,p99,ratio,peers}.png``; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    results["comparison"] = comparison(results)
    results["plots"] = plots.write_all(results, stem)
    json_path = stem.parent / f"{stem.name}.json"
    md_path = stem.parent / f"{stem.name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(markdown(results))
    return {"json": str(json_path), "md": str(md_path), **{Path(p).stem: p for p in results["plots"]}}
