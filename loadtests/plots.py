"""The report's PNG plots: served throughput and p99 vs concurrency, served/raw, and the peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests import comparison as cmp

STYLES = {"http": "-o", "http-json": "-.v", "grpc": "--s"}


def _series(points: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = sorted((p for p in points if p.get(key) is not None), key=lambda p: p["concurrency"])
    return [p["concurrency"] for p in pts], [p[key] for p in pts]


def _axes(plt, concurrencies: list[int], title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


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


def _lines(served: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in served:
        out.setdefault((p["model"], p["protocol"]), []).append(p)
    return out


def _plot_lines(ax, lines, colors, key: str, scale=None) -> None:
    for (model, protocol), points in lines.items():
        x, y = _series(points, key)
        if x and (scale is None or model in scale):
            y = [v / scale[model] for v in y] if scale else y
            ax.plot(x, y, STYLES.get(protocol, "-^"), color=colors[model], label=f"{model} {protocol}")


def served_plots(plt, results: dict[str, Any], stem: Path, concurrencies: list[int]) -> list[str]:
    raw, lines = results.get("raw", {}), _lines(results.get("served", []))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(m for m, _ in lines))}
    fig, ax = _axes(plt, concurrencies, "Served throughput (lines) vs best raw (dotted)", "requests / s")
    _plot_lines(ax, lines, colors, "throughput_rps")
    for m in colors:
        if m in raw:
            ax.axhline(raw[m]["best"]["images_per_s"], color=colors[m], linestyle=":", label=f"{m} raw best")
    _legend(ax)
    paths = [_save(fig, stem, "throughput")]
    fig, ax = _axes(plt, concurrencies, "p99 latency", "p99 (ms, log)")
    ax.set_yscale("log")
    _plot_lines(ax, lines, colors, "p99_ms")
    _legend(ax)
    paths.append(_save(fig, stem, "p99"))
    fig, ax = _axes(plt, concurrencies, "Served / best raw throughput", "ratio")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    _plot_lines(ax, lines, colors, "throughput_rps", {m: r["best"]["images_per_s"] for m, r in raw.items()})
    _legend(ax)
    return [*paths, _save(fig, stem, "ratio")]


def peers_plot(plt, results: dict[str, Any], stem: Path, concurrencies: list[int]) -> list[str]:
    models = results.get("config", {}).get("peer_models", [])
    if not results.get("peers") or not models:
        return []
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for i, (name, points) in enumerate(cmp.systems(results, model).items()):
            x, y = _series(points, "throughput_rps")
            ax.plot(x, y, "-o" if name.startswith("ours") else "--s", color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set(
            title=f"{model}: ours and the peers", xlabel="concurrency (closed loop)", ylabel="requests / s"
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return [_save(fig, stem, "peers")]


def write_all(results: dict[str, Any], stem: Path) -> list[str]:
    """Every plot the results have data for; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [*results.get("served", []), *(p for r in results.get("peers", []) for p in r["points"])]
    concurrencies = sorted({p["concurrency"] for p in points})
    paths = served_plots(plt, results, stem, concurrencies) if results.get("served") else []
    paths += peers_plot(plt, results, stem, concurrencies)
    plt.close("all")
    return paths
