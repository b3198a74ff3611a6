"""The benchmark's peers phase: label-map checks, ours / peer ratios and targets, the report's Peers
section, and a real run of two peer apps (plain FastAPI and LitServe, as subprocesses) through
``bench.main``. Smoke only: the numbers measured here mean nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtests import bench, comparison, labelmaps, report


def test_label_maps_compare_to_the_pixel():
    want = {"a": np.zeros((4, 4), np.uint8), "b": np.ones((4, 4), np.uint8)}
    assert labelmaps.compare(want, {k: v.copy() for k, v in want.items()}) == []
    off = {"a": want["a"].copy(), "b": np.ones((4, 5), np.uint8)}
    off["a"][0, 0] = 3
    assert labelmaps.compare(want, off) == ["a: 1 of 16 pixels differ", "b: shape (4, 5), expected (4, 4)"]
    assert labelmaps.compare(want, {"a": want["a"], "b": "HTTP 500"}) == ["b: HTTP 500"]
    assert labelmaps.compare(want, {"a": want["a"]}) == ["b: no answer"]


def test_failures_name_the_system_and_a_peer_that_did_not_run():
    results = {
        "label_maps": {"m": {"images": 2, "mismatches": []}},
        "peers": [
            {
                "peer": "litserve",
                "model": "m",
                "label_maps": {"images": 2, "mismatches": ["a: 3 of 9 pixels differ"]},
            },
            {"peer": "rayserve", "model": "m", "error": "did not start", "points": []},
            {"peer": "fastapi", "model": "m", "label_maps": {"images": 2, "mismatches": []}},
        ],
    }
    assert labelmaps.failures(results) == ["litserve m: a: 3 of 9 pixels differ", "rayserve m: did not run"]


def point(protocol: str, model: str, c: int, rps: float, cpu: dict | None = None) -> dict:
    return {
        "protocol": protocol, "model": model, "concurrency": c, "requests": int(rps * 2), "errors": 0,
        "error_reasons": {}, "throughput_rps": rps, "p50_ms": 1000 * c / rps, "p95_ms": 1100 * c / rps,
        "p99_ms": 1200 * c / rps, "mean_ms": 1000 * c / rps, "max_ms": 1300 * c / rps, "stage_mean_ms": {},
        "cpu_ms_per_request": cpu or {},
    }  # fmt: skip


def peer_results() -> dict:
    ours_cpu = {"Segmenter-null": 4.0, "proxies": 2.0, "ray system": 0.5, "load generator": 3.0, "other": 9.0}
    served = [point("http", m, c, r) for m, c, r in (("m", 1, 10.0), ("m", 16, 50.0), ("null", 1, 20.0))]
    served += [point("http", "null", 16, 100.0, ours_cpu), point("grpc", "m", 16, 60.0)]
    served += [point("grpc", "null", 16, 90.0)]
    peers = [
        {
            "peer": "litserve",
            "model": "m",
            "points": [point("http", "m", 1, 20.0), point("http", "m", 16, 40.0)],
            "options": ["--fast-queue"],
        },
        {
            "peer": "fastapi",
            "model": "m",
            "points": [point("http", "m", 1, 8.0), point("http", "m", 16, 100.0)],
        },
        {
            "peer": "litserve",
            "model": "null",
            "points": [point("http", "null", 16, 80.0, {"LitServe: main": 6.0})],
        },
    ]
    for run in peers:
        run["label_maps"] = {"images": 2, "mismatches": []}
    return {
        "meta": {"date": "2026-01-01", "machine": "t", "cpu_count": 2, "python": "3.11", "torch": "x",
                 "ray": "y"},
        "config": {"image_size": 64, "duration_s": 1.0, "warmup_s": 0.1, "concurrency": [1, 16],
                   "raw_duration_s": 0, "quick": True, "peer_models": ["m", "null"], "null_model": "null"},
        "images": [{"name": "shapes-0", "size": "64x64"}],
        "raw": {}, "served": served, "peers": peers, "metrics": {},
        "label_maps": {"m": {"images": 2, "mismatches": []}},
    }  # fmt: skip


def test_ratios_and_targets_read_the_right_points():
    results = peer_results()
    lines = comparison.systems(results, "m")
    assert list(lines) == ["ours http", "ours grpc", "LitServe", "plain FastAPI"]
    ratios = comparison.ratios(lines)
    assert ratios["LitServe"] == pytest.approx(
        {"saturation": 50 / 40, "grpc_saturation": 60 / 40, "c1_rps": 10 / 20, "c1_p50": 100 / 50}
    )
    assert ratios["plain FastAPI"]["saturation"] == pytest.approx(0.5)
    verdicts = {t["target"]: (t["value"], t["met"]) for t in comparison.targets(results)}
    assert verdicts["m: ours/LitServe req/s at saturation, HTTP"] == (pytest.approx(1.25), True)
    assert verdicts["m: ours/plain FastAPI req/s at saturation, HTTP"] == (pytest.approx(0.5), False)
    assert verdicts["m: ours/LitServe p50 at c=1, HTTP"] == (pytest.approx(2.0), False)
    assert verdicts["m: ours gRPC/HTTP req/s at saturation"] == (pytest.approx(1.2), True)
    assert verdicts["null: ours gRPC/HTTP req/s at saturation"] == (pytest.approx(0.9), False)
    assert verdicts["null: ours/LitServe p50 at c=1, HTTP"] == (None, None)  # LitServe ran no c=1 here
    # The service's processes only: not the load generator, not the unrelated "other" processes.
    assert verdicts["null: ours CPU ms per request (every service process), HTTP, c=16"] == (6.5, True)
    assert not any(t.startswith("null: ours/plain FastAPI") for t in verdicts)  # not a target


def test_report_has_the_peers_section(tmp_path):
    results = peer_results()
    results["failures"] = ["fastapi null: did not run"]
    paths = report.write(results, tmp_path / "p")
    md = (tmp_path / "p.md").read_text()
    assert "**FAILED RUN:** fastapi null: did not run" in md
    assert "## Peers: the same model and work served by other stacks" in md
    assert "Peer options: LitServe `--fast-queue`." in md
    assert "| ours http | 10.0 | 50.0 | 50.0 (c=16) | 100.0 |" in md
    assert "| LitServe | 1.25 | 1.50 | 0.50 | 2.00 |" in md
    assert "| m: ours/plain FastAPI req/s at saturation, HTTP | 0.50 | >= 1 | **no** |" in md
    assert (
        "| null | ours http | 16 | 100.0 | 6.5 | 3.0 |" in md
        and "| null | LitServe | 16 | 80.0 | 6.0 |" in md
    )
    assert "Label maps: ours, LitServe, plain FastAPI equal the model called directly" in md
    assert (
        json.loads(Path(paths["json"]).read_text())["comparison"]["ratios"]["m"]["LitServe"]["saturation"]
        == 1.25
    )
    assert "p-peers" in paths


def test_bench_main_runs_two_peers(tmp_path):
    """The peers phase end to end: FastAPI and LitServe apps started on free ports as subprocesses,
    their label maps equal to the direct call, a closed-loop point each, their processes' CPU."""
    code = bench.main(
        ["--quick", "--no-raw", "--no-served", "--models", "null", "--peers", "fastapi,litserve",
         "--concurrency", "2", "--duration-s", "1", "--warmup-s", "0.3", "--images", "1",
         "--image-size", "64", "--out-dir", str(tmp_path), "--label", "peers"]
    )  # fmt: skip
    assert code == 0
    [result] = tmp_path.glob("*-peers.json")
    data = json.loads(result.read_text())
    assert data["config"]["peer_models"] == ["null"] and not data["failures"]
    runs = {r["peer"]: r for r in data["peers"]}
    assert set(runs) == {"fastapi", "litserve"}
    for peer, label in (("fastapi", "plain FastAPI"), ("litserve", "LitServe")):
        run = runs[peer]
        assert run["label_maps"] == {"images": 4, "mismatches": []}
        [p] = run["points"]
        assert p["requests"] > 0 and p["errors"] == 0, p
        assert any(role.startswith(f"{label}: ") for role in p["cpu_ms_per_request"]), p["cpu_ms_per_request"]
    assert "LitServe: workers" in runs["litserve"]["points"][0]["cpu_ms_per_request"]
    assert "## Peers" in (tmp_path / f"{result.stem}.md").read_text()
