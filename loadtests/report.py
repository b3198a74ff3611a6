"""The benchmark's report: the headline numbers, ``<stem>.json``, ``<stem>.md`` and PNG plots.

Headline numbers per (model, protocol), see docs/benchmark.md:

* served/raw at saturation: the highest served throughput over the concurrency levels, divided by
  the best raw throughput (best layout and batch size of the model);
* p50 overhead at concurrency 1: served p50 at the lowest concurrency minus the raw batch-1 latency
  with the replicas' thread count;
* where the time goes: the mean server-side stage timings (``timings_ms`` of the answers) plus
  ``hops`` (ingress total minus the stages: calls between deployments) and ``outside`` (client
  latency minus the ingress total: proxy, protocol, (de)serialization).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtests.common import fmt

STAGE_COLUMNS = ("decode", "preprocess", "queue", "forward", "postprocess", "encode", "hops", "total")


def headline(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {protocol: numbers}}`` from the raw and served sections."""
    raw = results.get("raw", {})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    served = results.get("served", [])
    for model in dict.fromkeys(p["model"] for p in served):
        for protocol in dict.fromkeys(p["protocol"] for p in served if p["model"] == model):
            points = sorted(
                (p for p in served if p["model"] == model and p["protocol"] == protocol),
                key=lambda p: p["concurrency"],
            )
            measured = [p for p in points if p["requests"] > 0]
            if not measured:
                continue
            top = max(measured, key=lambda p: p["throughput_rps"])
            low = measured[0]
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
            model_raw = raw.get(model)
            if model_raw:
                best = model_raw["best"]
                row.update(
                    raw_best_ips=best["images_per_s"],
                    raw_best_layout=best["layout"],
                    raw_best_batch=best["batch_size"],
                    served_raw_ratio=top["throughput_rps"] / best["images_per_s"],
                )
                if "batch1_latency_ms" in model_raw and low["p50_ms"] is not None:
                    row["raw_batch1_ms"] = model_raw["batch1_latency_ms"]
                    row["p50_overhead_low_ms"] = low["p50_ms"] - model_raw["batch1_latency_ms"]
            out.setdefault(model, {})[protocol] = row
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    cfg = results["config"]
    lines = [
        f"# Benchmark {meta['date']} on {meta['machine']}",
        "",
        f"{meta['cpu_count']} CPUs ({meta.get('cpu_model') or 'unknown CPU'}), "
        f"{meta.get('gpu') or 'no GPU'}; "
        f"Python {meta['python']}, torch {meta['torch']}, ray {meta['ray']}; "
        f"commit {meta.get('commit') or '?'}{' (dirty)' if meta.get('dirty') else ''}.",
        f"Images: {len(results['images'])} seeded {cfg['image_size']}x{cfg['image_size']} "
        f"({', '.join(sorted({i['name'].split('-')[0] for i in results['images']}))}); "
        f"served: {cfg['duration_s']:g} s per point after {cfg['warmup_s']:g} s warm-up, "
        f"concurrency {', '.join(map(str, cfg['concurrency']))}; raw: {cfg['raw_duration_s']:g} s per "
        f"layout and batch size."
        + (" **Quick smoke run: the numbers mean nothing.**" if cfg.get("quick") else ""),
        "",
    ]
    if results.get("skipped_models"):
        skipped = "; ".join(f"{m} ({why})" for m, why in results["skipped_models"].items())
        lines += [f"Skipped models: {skipped}.", ""]
    head = results.get("headline", {})
    if head:
        lines += [
            "## Headline",
            "",
            "| model | protocol | raw best img/s (layout, batch) | served max req/s (at c) | served/raw "
            "| p50 at lowest c | raw batch-1 ms | p50 overhead ms | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model, protocols in head.items():
            for protocol, h in protocols.items():
                raw_cell = (
                    f"{fmt(h.get('raw_best_ips'), 2)} ({h['raw_best_layout']}, b{h['raw_best_batch']})"
                    if "raw_best_ips" in h
                    else "-"
                )
                lines.append(
                    f"| {model} | {protocol} | {raw_cell} | {fmt(h['served_max_rps'], 2)} "
                    f"(c={h['saturation_concurrency']}) | {fmt(h.get('served_raw_ratio'), 2)} "
                    f"| {fmt(h['p50_low_ms'])} (c={h['lowest_concurrency']}) | {fmt(h.get('raw_batch1_ms'))} "
                    f"| {fmt(h.get('p50_overhead_low_ms'))} | {h['errors']} |"
                )
        lines.append("")
    raw = results.get("raw", {})
    if raw:
        lines += [
            "## Raw model (no serving)",
            "",
            "Segmenter work per batch (normalize + forward + restore/argmax) on prepared inputs "
            f"({cfg['image_size']}x{cfg['image_size']} images fitted to each model's input policy).",
            "",
            "| model | layout (procs x threads) | batch | img/s | ms/batch p50 | ms/image | forward ms "
            "| postprocess ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for model, r in raw.items():
            for lay in r["layouts"]:
                for b in lay["batches"].values():
                    mark = (
                        " **best**"
                        if (lay["layout"], b["batch_size"]) == (r["best"]["layout"], r["best"]["batch_size"])
                        else ""
                    )
                    lines.append(
                        f"| {model} | {lay['layout']} | {b['batch_size']} "
                        f"| {fmt(b['images_per_s'], 2)}{mark} | {fmt(b['batch_ms_p50'])} "
                        f"| {fmt(b['ms_per_image'])} | {fmt(b['forward_ms_mean'])} "
                        f"| {fmt(b['postprocess_ms_mean'])} |"
                    )
        lines.append("")
    served = results.get("served", [])
    if served:
        lines += [
            "## Served (closed loop)",
            "",
            "| protocol | model | c | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
            "| served/raw | client CPU | machine CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in served:
            best = raw.get(p["model"], {}).get("best")
            ratio = p["throughput_rps"] / best["images_per_s"] if best else None
            lines.append(
                f"| {p['protocol']} | {p['model']} | {p['concurrency']} | {fmt(p['throughput_rps'], 2)} "
                f"| {fmt(p['p50_ms'])} | {fmt(p['p95_ms'])} | {fmt(p['p99_ms'])} | {p['errors']} "
                f"| {fmt(p.get('mean_batch_size'), 2)} | {fmt(ratio, 2)} "
                f"| {fmt(100 * p.get('client_cpu_fraction', 0), 0)} % "
                f"| {fmt(100 * p.get('machine_cpu_busy_fraction', 0), 0)} % |"
            )
        lines += [
            "",
            "## Where the time goes (mean ms per request, server-side `timings_ms`)",
            "",
            "| protocol | model | c | " + " | ".join(STAGE_COLUMNS) + " | outside | client mean |",
            "|---|---|---:|" + "---:|" * (len(STAGE_COLUMNS) + 2),
        ]
        for p in served:
            stages = p.get("stage_mean_ms", {})
            cells = " | ".join(fmt(stages.get(s)) for s in STAGE_COLUMNS)
            lines.append(
                f"| {p['protocol']} | {p['model']} | {p['concurrency']} | {cells} "
                f"| {fmt(p.get('outside_server_ms'))} | {fmt(p.get('mean_ms'))} |"
            )
        lines += [
            "",
            "forward and postprocess are the time of the whole batch the request was in; hops = ingress "
            "total minus the stages (calls between deployments, object store); outside = client latency "
            "minus the ingress total (proxy, HTTP/gRPC, serialization).",
        ]
        lines += cpu_table(served)
        errors = [p for p in served if p["errors"]]
        if errors:
            lines += ["", "Errors:", ""]
            for p in errors:
                lines.append(
                    f"* {p['protocol']} {p['model']} c={p['concurrency']}: "
                    + ", ".join(f"{n} x {why}" for why, n in p["error_reasons"].items())
                )
        lines.append("")
    batch = results.get("metrics", {}).get("mean_batch_size", {})
    if batch:
        lines += [
            "## Batch sizes from the metrics endpoint (whole served run)",
            "",
            "Means computed from the histogram buckets (Ray 2.60 exports `_sum` from bucket midpoints).",
            "",
        ]
        for name, groups in batch.items():
            for group, mean in groups.items():
                lines.append(f"* `{name}` {group}: mean {mean:.2f}")
        lines.append("")
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]] + [""]
    return "\n".join(lines)


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
    lines = [
        "",
        "## Where the CPU goes (ms of CPU per request, by process, at each line's best throughput)",
        "",
        "| model | protocol | c | req/s | " + " | ".join(columns) + " | all |",
        "|---|---|---:|---:|" + "---:|" * (len(columns) + 1),
    ]
    for (model, protocol), p in tops.items():
        ms = p["cpu_ms_per_request"]
        cells = " | ".join(fmt(ms.get(r)) for r in columns)
        lines.append(
            f"| {model} | {protocol} | {p['concurrency']} | {fmt(p['throughput_rps'], 2)} | {cells} "
            f"| {fmt(sum(ms.values()))} |"
        )
    lines += [
        "",
        "From each process's CPU time before and after the measured window (`loadtests/proc_cpu.py`), "
        "divided by the requests completed in it. Segmenter columns include the model; all segmenter "
        "replicas of a deployment are summed; `load generator` is the benchmark's client.",
    ]
    return lines


def plots(results: dict[str, Any], stem: Path) -> list[str]:
    """Throughput and p99 vs concurrency, and served/raw vs concurrency; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = results.get("served", [])
    if not served:
        return []
    raw = results.get("raw", {})
    models = list(dict.fromkeys(p["model"] for p in served))
    protocols = list(dict.fromkeys(p["protocol"] for p in served))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    styles = {"http": "-o", "grpc": "--s"}
    concurrencies = sorted({p["concurrency"] for p in served})

    def series(model: str, protocol: str, key: str) -> tuple[list[int], list[float]]:
        pts = sorted(
            (p for p in served if p["model"] == model and p["protocol"] == protocol and p[key] is not None),
            key=lambda p: p["concurrency"],
        )
        return [p["concurrency"] for p in pts], [p[key] for p in pts]

    def axes(title: str, ylabel: str):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        return fig, ax

    paths = []
    fig, ax = axes("Served throughput (lines) vs best raw (dotted)", "requests / s")
    for m in models:
        for proto in protocols:
            x, y = series(m, proto, "throughput_rps")
            if x:
                ax.plot(x, y, styles.get(proto, "-^"), color=colors[m], label=f"{m} {proto}")
        if m in raw:
            ax.axhline(raw[m]["best"]["images_per_s"], color=colors[m], linestyle=":", label=f"{m} raw best")
    _legend(ax)
    paths.append(_save(fig, stem, "throughput"))

    fig, ax = axes("p99 latency", "p99 (ms, log)")
    ax.set_yscale("log")
    for m in models:
        for proto in protocols:
            x, y = series(m, proto, "p99_ms")
            if x:
                ax.plot(x, y, styles.get(proto, "-^"), color=colors[m], label=f"{m} {proto}")
    _legend(ax)
    paths.append(_save(fig, stem, "p99"))

    fig, ax = axes("Served / best raw throughput", "ratio")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    for m in models:
        if m not in raw:
            continue
        for proto in protocols:
            x, y = series(m, proto, "throughput_rps")
            if x:
                ratio = [v / raw[m]["best"]["images_per_s"] for v in y]
                ax.plot(x, ratio, styles.get(proto, "-^"), color=colors[m], label=f"{m} {proto}")
    _legend(ax)
    paths.append(_save(fig, stem, "ratio"))
    plt.close("all")
    return paths


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no raw measurement", ha="center", va="center", transform=ax.transAxes)


def _save(fig, stem: Path, kind: str) -> str:
    path = stem.parent / f"{stem.name}-{kind}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def write(results: dict[str, Any], stem: Path) -> dict[str, str]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>-{throughput,p99,ratio}.png``; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    results["plots"] = plots(results, stem)
    json_path = stem.parent / f"{stem.name}.json"
    md_path = stem.parent / f"{stem.name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(markdown(results))
    return {"json": str(json_path), "md": str(md_path), **{Path(p).stem: p for p in results["plots"]}}
