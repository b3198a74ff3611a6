"""Ours against the peers, from the results: each system's sweep per model, the ratios ours / peer
at saturation and at concurrency 1, and the targets of the peers issue, each with its verdict.

A "system" is one line of points over the concurrency levels: ``ours http`` (the label-map PNG as
the body, the same work as every peer), ``ours grpc``, ``ours http-json``, and each peer by its label.
"""

from __future__ import annotations

from typing import Any

from loadtests import proc_cpu
from loadtests.peers import PEER_LABELS

OURS = "ours http"
CPU_CONCURRENCY = 16  # the CPU-per-request target is read at this concurrency (else the highest run)
CPU_TARGET_MS = 7.0


def systems(results: dict[str, Any], model: str) -> dict[str, list[dict[str, Any]]]:
    """System name -> its points for ``model``, by concurrency."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in results.get("served", []):
        if p["model"] == model:
            out.setdefault(f"ours {p['protocol']}", []).append(p)
    for run in results.get("peers", []):
        if run["model"] == model:
            out[PEER_LABELS.get(run["peer"], run["peer"])] = list(run["points"])
    return {name: sorted(points, key=lambda p: p["concurrency"]) for name, points in out.items()}


def best(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    measured = [p for p in points if p["requests"] > 0]
    return max(measured, key=lambda p: p["throughput_rps"]) if measured else None


def at(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((p for p in points if p["concurrency"] == concurrency and p["requests"] > 0), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rps(point: dict[str, Any] | None) -> float | None:
    return point["throughput_rps"] if point else None


def p50(point: dict[str, Any] | None) -> float | None:
    return point["p50_ms"] if point else None


def ratios(lines: dict[str, list[dict[str, Any]]], ours: str = OURS) -> dict[str, dict[str, float | None]]:
    """Peer -> ours/peer: req/s at saturation (best over c), req/s at c=1, and p50 at c=1."""
    mine = lines.get(ours, [])
    out = {}
    for name, points in lines.items():
        if name.startswith("ours"):
            continue
        out[name] = {
            "saturation": _ratio(rps(best(mine)), rps(best(points))),
            "grpc_saturation": _ratio(rps(best(lines.get("ours grpc", []))), rps(best(points))),
            "c1_rps": _ratio(rps(at(mine, 1)), rps(at(points, 1))),
            "c1_p50": _ratio(p50(at(mine, 1)), p50(at(points, 1))),
        }
    return out


def cpu_point(points: list[dict[str, Any]], concurrency: int = CPU_CONCURRENCY) -> dict[str, Any] | None:
    """The point the CPU table reads: at ``concurrency`` if it was run, else the highest one."""
    with_cpu = [p for p in points if p.get("cpu_ms_per_request")]
    return at(with_cpu, concurrency) or (with_cpu[-1] if with_cpu else None)


def _target(text: str, value: float | None, limit: float, at_least: bool) -> dict[str, Any]:
    met = None if value is None else (value >= limit if at_least else value <= limit)
    return {"target": text, "value": value, "limit": limit, "op": ">=" if at_least else "<=", "met": met}


def _model_targets(model: str, lines: dict, null: bool) -> list[dict[str, Any]]:
    r = ratios(lines)
    litserve, fastapi = r.get(PEER_LABELS["litserve"], {}), r.get(PEER_LABELS["fastapi"], {})
    grpc_http = _ratio(rps(best(lines.get("ours grpc", []))), rps(best(lines.get(OURS, []))))
    out = [
        _target(f"{model}: ours/LitServe req/s at saturation, HTTP", litserve.get("saturation"), 1.0, True)
    ]
    if not null:
        text = f"{model}: ours/plain FastAPI req/s at saturation, HTTP"
        out.append(_target(text, fastapi.get("saturation"), 1.0, True))
    out.append(_target(f"{model}: ours/LitServe p50 at c=1, HTTP", litserve.get("c1_p50"), 1.0, False))
    out.append(_target(f"{model}: ours gRPC/HTTP req/s at saturation", grpc_http, 1.0, True))
    if null:
        point = cpu_point(lines.get(OURS, []))
        value = proc_cpu.service_ms(point["cpu_ms_per_request"]) if point else None
        c = point["concurrency"] if point else CPU_CONCURRENCY
        text = f"{model}: ours CPU ms per request (every service process), HTTP, c={c}"
        out.append(_target(text, value, CPU_TARGET_MS, False))
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The peers issue's targets, for every model the peers ran."""
    null = results.get("config", {}).get("null_model")
    out = []
    for model in results.get("config", {}).get("peer_models", []):
        out += _model_targets(model, systems(results, model), model == null)
    return out


def comparison(results: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps: per peer model the ratios, and the targets."""
    models = results.get("config", {}).get("peer_models", [])
    return {"ratios": {m: ratios(systems(results, m)) for m in models}, "targets": targets(results)}
