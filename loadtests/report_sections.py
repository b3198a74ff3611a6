"""The report's markdown sections about our service and the raw model (``report.markdown`` puts
them together with ``report_peers.section``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.common import fmt, md_table

STAGE_COLUMNS = ("decode", "preprocess", "queue", "forward", "postprocess", "encode", "hops", "total")


def header(results: dict[str, Any]) -> list[str]:
    meta, cfg = results["meta"], results["config"]
    families = ", ".join(sorted({i["name"].split("-")[0] for i in results["images"]}))
    lines = [
        f"# Benchmark {meta['date']} on {meta['machine']}",
        "",
        f"{meta['cpu_count']} CPUs ({meta.get('cpu_model') or 'unknown CPU'}), "
        f"{meta.get('gpu') or 'no GPU'}; "
        f"Python {meta['python']}, {_versions(meta)}; "
        f"commit {meta.get('commit') or '?'}{' (dirty)' if meta.get('dirty') else ''}; "
        f"load average at the start {fmt_load(meta.get('load_average'))}.",
        f"Images: {len(results['images'])} seeded {cfg['image_size']}x{cfg['image_size']} ({families}); "
        f"served: {cfg['duration_s']:g} s per point after {cfg['warmup_s']:g} s warm-up, "
        f"concurrency {', '.join(map(str, cfg['concurrency']))}; raw: {cfg['raw_duration_s']:g} s per "
        "layout and batch size."
        + (" **Quick smoke run: the numbers mean nothing.**" if cfg.get("quick") else ""),
        "",
    ]
    if results.get("failures"):
        lines += ["**FAILED RUN:** " + "; ".join(results["failures"][:10]), ""]
    if results.get("skipped_models"):
        skipped = "; ".join(f"{m} ({why})" for m, why in results["skipped_models"].items())
        lines += [f"Skipped models: {skipped}.", ""]
    return lines


def _versions(meta: dict[str, Any]) -> str:
    versions = meta.get("versions") or {"torch": meta.get("torch"), "ray": meta.get("ray")}
    return ", ".join(f"{k} {v}" for k, v in versions.items() if v)


def fmt_load(load: list[float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in load) if load else "unknown"


def headline_table(head: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    if not head:
        return []
    columns = ["model", "protocol", "raw best img/s (layout, batch)", "served max req/s (at c)", "served/raw"]
    columns += ["p50 at lowest c", "raw batch-1 ms", "p50 overhead ms", "errors"]
    rows = []
    for model, protocols in head.items():
        for protocol, h in protocols.items():
            raw_cell = "-"
            if "raw_best_ips" in h:
                raw_cell = f"{fmt(h['raw_best_ips'], 2)} ({h['raw_best_layout']}, b{h['raw_best_batch']})"
            served = f"{fmt(h['served_max_rps'], 2)} (c={h['saturation_concurrency']})"
            low = f"{fmt(h['p50_low_ms'])} (c={h['lowest_concurrency']})"
            ratio, overhead = fmt(h.get("served_raw_ratio"), 2), fmt(h.get("p50_overhead_low_ms"))
            rows.append(
                [model, protocol, raw_cell, served, ratio, low, fmt(h.get("raw_batch1_ms")), overhead]
            )
            rows[-1].append(h["errors"])
    return ["## Headline", "", *md_table(columns, rows, left=2), ""]


def raw_table(raw: dict[str, Any], image_size: int) -> list[str]:
    if not raw:
        return []
    columns = ["model", "layout (procs x threads)", "batch", "img/s", "ms/batch p50", "ms/image"]
    columns += ["forward ms", "postprocess ms"]
    rows = []
    for model, r in raw.items():
        top = (r["best"]["layout"], r["best"]["batch_size"])
        for lay in r["layouts"]:
            for b in lay["batches"].values():
                mark = " **best**" if (lay["layout"], b["batch_size"]) == top else ""
                rows.append(
                    [model, lay["layout"], b["batch_size"], fmt(b["images_per_s"], 2) + mark]
                    + [
                        fmt(b[k])
                        for k in ("batch_ms_p50", "ms_per_image", "forward_ms_mean", "postprocess_ms_mean")
                    ]
                )
    intro = (
        "Segmenter work per batch (normalize + forward + restore/argmax) on prepared inputs "
        f"({image_size}x{image_size} images fitted to each model's input policy)."
    )
    return ["## Raw model (no serving)", "", intro, "", *md_table(columns, rows, left=2), ""]


def served_table(served: list[dict[str, Any]], raw: dict[str, Any]) -> list[str]:
    columns = ["protocol", "model", "c", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "mean batch"]
    columns += ["served/raw", "client CPU", "machine CPU"]
    rows = []
    for p in served:
        top = raw.get(p["model"], {}).get("best")
        ratio = p["throughput_rps"] / top["images_per_s"] if top else None
        rows.append(
            [p["protocol"], p["model"], p["concurrency"], fmt(p["throughput_rps"], 2)]
            + [fmt(p["p50_ms"]), fmt(p["p95_ms"]), fmt(p["p99_ms"]), p["errors"]]
            + [fmt(p.get("mean_batch_size"), 2), fmt(ratio, 2)]
            + [f"{fmt(100 * p.get(k, 0), 0)} %" for k in ("client_cpu_fraction", "machine_cpu_busy_fraction")]
        )
    return ["## Served (closed loop)", "", *md_table(columns, rows, left=2)]


def stages_table(served: list[dict[str, Any]]) -> list[str]:
    """Mean server-side stage times: only answers that carry ``timings_ms`` (JSON and gRPC)."""
    timed = [p for p in served if p.get("stage_mean_ms")]
    if not timed:
        return []
    rows = [
        [p["protocol"], p["model"], p["concurrency"]]
        + [fmt(p["stage_mean_ms"].get(s)) for s in STAGE_COLUMNS]
        + [fmt(p.get("outside_server_ms")), fmt(p.get("mean_ms"))]
        for p in timed
    ]
    columns = ["protocol", "model", "c", *STAGE_COLUMNS, "outside", "client mean"]
    title = "## Where the time goes (mean ms per request, server-side `timings_ms`)"
    return ["", title, "", *md_table(columns, rows, left=2), "", STAGES_NOTE]


STAGES_NOTE = (
    "forward and postprocess are the time of the whole batch the request was in; hops = ingress total "
    "minus the stages (calls between deployments, object store); outside = client latency minus the "
    "ingress total (proxy, HTTP/gRPC, serialization). The `http` lines (PNG body) carry no timings."
)


def errors_list(served: list[dict[str, Any]]) -> list[str]:
    failed = [p for p in served if p["errors"]]
    if not failed:
        return []
    reasons = [
        f"* {p['protocol']} {p['model']} c={p['concurrency']}: "
        + ", ".join(f"{n} x {why}" for why, n in p["error_reasons"].items())
        for p in failed
    ]
    return ["", "Errors:", "", *reasons]


def batch_section(batch: dict[str, dict[str, float]]) -> list[str]:
    if not batch:
        return []
    lines = ["## Batch sizes from the metrics endpoint (whole served run)", "", BATCH_NOTE, ""]
    for name, groups in batch.items():
        lines += [f"* `{name}` {group}: mean {mean:.2f}" for group, mean in groups.items()]
    return [*lines, ""]


BATCH_NOTE = "Means computed from the histogram buckets (Ray 2.60 exports `_sum` from bucket midpoints)."


def plots_section(plots: list[str]) -> list[str]:
    if not plots:
        return []
    return ["## Plots", "", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
