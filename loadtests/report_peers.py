"""The report's "Peers" section: per model, each system's req/s at every concurrency, its best and
its p50 at c=1; the ratios ours / peer; the targets with their verdicts; CPU per request by process."""

from __future__ import annotations

from typing import Any

from loadtests import comparison as cmp
from loadtests import proc_cpu
from loadtests.common import fmt
from loadtests.peers import PEER_LABELS


def _sweep_table(lines: dict[str, list[dict]], concurrency: list[int], raw_best: dict | None) -> list[str]:
    head = (
        "| system | " + " | ".join(f"c={c}" for c in concurrency) + " | best req/s (at c) | p50 ms at c=1 |"
    )
    rows = [head, "|---|" + "---:|" * (len(concurrency) + 2)]
    for name, points in lines.items():
        cells = " | ".join(fmt(cmp.rps(cmp.at(points, c)), 1) for c in concurrency)
        top = cmp.best(points)
        best_cell = f"{fmt(top['throughput_rps'], 1)} (c={top['concurrency']})" if top else "-"
        rows.append(f"| {name} | {cells} | {best_cell} | {fmt(cmp.p50(cmp.at(points, 1)))} |")
    if raw_best:
        blanks = " | ".join("" for _ in concurrency)
        label = f"{fmt(raw_best['images_per_s'], 1)} img/s ({raw_best['layout']}, b{raw_best['batch_size']})"
        rows.append(f"| raw model (best) | {blanks} | {label} | |")
    return rows


def _ratio_table(lines: dict[str, list[dict]]) -> list[str]:
    rows = [
        "| peer | ours http / peer at saturation | ours grpc / peer at saturation | req/s at c=1 "
        "| p50 at c=1 (below 1: ours faster) |",
        "|---|---:|---:|---:|---:|",
    ]
    for peer, r in cmp.ratios(lines).items():
        cells = " | ".join(fmt(r[k], 2) for k in ("saturation", "grpc_saturation", "c1_rps", "c1_p50"))
        rows.append(f"| {peer} | {cells} |")
    return rows


def _label_maps(results: dict[str, Any], model: str) -> str:
    checks = [("ours", results.get("label_maps", {}).get(model))]
    checks += [(PEER_LABELS.get(r["peer"], r["peer"]), r.get("label_maps")) for r in results.get("peers", [])
               if r["model"] == model]  # fmt: skip
    done = [(name, c) for name, c in checks if c]
    bad = [f"{name}: {'; '.join(c['mismatches'][:3])}" for name, c in done if c["mismatches"]]
    if bad:
        return "**Label maps differ from the direct call (a failed run):** " + " / ".join(bad)
    names = ", ".join(name for name, _ in done)
    return (
        f"Label maps: {names} equal the model called directly, to the pixel, on all images." if done else ""
    )


def _model_section(results: dict[str, Any], model: str) -> list[str]:
    lines = cmp.systems(results, model)
    concurrency = sorted({p["concurrency"] for points in lines.values() for p in points})
    raw_best = results.get("raw", {}).get(model, {}).get("best")
    out = [f"### {model}", "", *_sweep_table(lines, concurrency, raw_best), ""]
    out += [*_ratio_table(lines), "", _label_maps(results, model), ""]
    failed = [r for r in results.get("peers", []) if r["model"] == model and r.get("error")]
    out += [f"* {PEER_LABELS.get(r['peer'], r['peer'])} failed: `{r['error'][-300:]}`" for r in failed]
    return out + ([""] if failed else [])


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    rows = ["| target | measured | wanted | met |", "|---|---:|---:|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        rows.append(f"| {t['target']} | {fmt(t['value'], 2)} | {t['op']} {t['limit']:g} | {met} |")
    return rows


def _cpu_table(results: dict[str, Any], models: list[str]) -> list[str]:
    rows = [
        "| model | system | c | req/s | service CPU ms/request | load generator ms | by process (ms) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for model in models:
        for name, points in cmp.systems(results, model).items():
            p = cmp.cpu_point(points)
            if p is None:
                continue
            ms = p["cpu_ms_per_request"]
            parts = ", ".join(f"{r} {v:.1f}" for r, v in ms.items() if r not in ("load generator", "other"))
            rows.append(
                f"| {model} | {name} | {p['concurrency']} | {fmt(p['throughput_rps'], 1)} "
                f"| {fmt(proc_cpu.service_ms(ms))} | {fmt(ms.get('load generator'))} | {parts} |"
            )
    return rows


def section(results: dict[str, Any]) -> list[str]:
    models = results.get("config", {}).get("peer_models", [])
    if not results.get("peers") or not models:
        return []
    out = ["## Peers: the same model and work served by other stacks", "", PEERS_NOTE, ""]
    options = {
        PEER_LABELS.get(r["peer"], r["peer"]): r["options"] for r in results["peers"] if r.get("options")
    }
    if options:
        out += ["Peer options: " + "; ".join(f"{k} `{' '.join(v)}`" for k, v in options.items()) + ".", ""]
    for model in models:
        out += _model_section(results, model)
    out += ["### Targets", "", *_targets_table(results.get("comparison", {}).get("targets", [])), ""]
    out += ["### CPU per request, ours and the peers", "", *_cpu_table(results, models), "", CPU_NOTE, ""]
    return out


PEERS_NOTE = (
    "Every system decodes the image, fits it to the model's input, runs the same weights and returns "
    "the label-map PNG (`ours http` asks ours for `Accept: image/png`; `ours http-json` is ours' JSON "
    "answer, `ours grpc` the gRPC answer). Ratios are ours / peer: above 1 ours serves more; for p50, "
    "below 1 ours answers sooner. Saturation = the best req/s over the concurrency levels."
)
CPU_NOTE = (
    "At c=16 (else the highest concurrency run): CPU milliseconds per completed request, from each "
    "process's CPU time over the measured window. Service CPU = every process of the system under test "
    "(ours: proxies, ingress, segmenters, Ray's own processes; a peer: its whole process tree), without "
    "the load generator and processes outside the run. With the null model this is the serving cost."
)
