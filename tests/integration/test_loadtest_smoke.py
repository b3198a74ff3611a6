"""Smoke runs of loadtests/ against the session's real service: locust over HTTP and gRPC, and the
benchmark's label-map check, closed-loop client, metrics reader and report. They prove the code paths
work, so the load tests and the benchmark do not rot; the numbers they measure mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from loadtests import closed_loop, labelmaps, proc_cpu, promparse, report
from loadtests.common import DEFAULT_REPOSITORY
from loadtests.images import make_images

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def served_models(service) -> list[str]:
    return [m["name"] for m in httpx.get(f"{service.url}/v1/models", timeout=30).json()["models"]]


def test_locust_run_over_http_and_grpc_has_no_failures(service, tmp_path):
    out = tmp_path / "locust"
    command = [
        sys.executable, str(ROOT / "loadtests" / "run.py"),
        "--users", "4", "--spawn-rate", "4", "--duration", "10",
        "--host", service.url, "--grpc-target", service.grpc_target,
        "--image-sizes", "96x96:2,200x150:1", "--synthetic-per-size", "1",
        "--out-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and not summary["exceptions"]
    assert {r["type"] for r in summary["rows"]} == {"POST", "grpc"}  # both users ran
    assert {r["name"].split()[0] for r in summary["rows"]} <= set(served_models(service))
    total = summary["total"]
    assert total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"] <= total["max_ms"]
    assert (out / "locust_stats.csv").exists() and (out / "summary.md").read_text().startswith("# Load test")


def test_bench_closed_loop_metrics_and_report(service, tmp_path):
    served = served_models(service)
    model = "unet-shapes" if "unet-shapes" in served else served[0]
    images = make_images((96, 96), seed=0, synthetic=2)
    # The served label maps are the model's own, called directly with the service's functions.
    reference = labelmaps.direct(DEFAULT_REPOSITORY, model, images)
    assert labelmaps.check(service.url, model, images, reference) == {"images": 5, "mismatches": []}
    points = [closed_loop.PointSpec(p, model, c) for p in ("http-json", "grpc") for c in (1, 4)]
    points.append(closed_loop.PointSpec("http", model, 4))  # Accept: image/png, the peers' answer
    before = promparse.histograms(promparse.scrape(service.metrics_url))
    rows = closed_loop.measure(
        points,
        images,
        url=service.url,
        grpc_target=service.grpc_target,
        # Long enough that a request completes inside the window even on a loaded 2-core CI machine.
        warmup_s=0.5,
        duration_s=4.0,
        timeout_s=30,
        verify_png=True,
        log=lambda _: None,
    )
    for row in rows:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["mean_batch_size"] >= 1  # from the JSON, the protobuf, or the PNG's x-batch-size header
        # CPU by process: the real service's HAProxy and ingress replicas (which run the models) spent some
        cpu = row["cpu_ms_per_request"]
        assert {"haproxy", "Ingress"} <= set(cpu) and cpu["Ingress"] > 0 and cpu["haproxy"] > 0, cpu
        if row["protocol"] == "http":
            assert row["stage_mean_ms"] == {}  # a PNG body carries no timings
            continue
        assert {"decode", "preprocess", "queue", "forward", "postprocess", "encode", "total"} <= set(
            row["stage_mean_ms"]
        )
        assert row["outside_server_ms"] is not None
    # The metrics endpoint parses; Ray exports with a delay, so the new batches may not be in yet.
    after = promparse.histograms(promparse.scrape(service.metrics_url))
    for means in promparse.mean_batch_sizes(promparse.delta(before, after)).values():
        assert all(m >= 1 for m in means.values())

    # The service's idle cost: its replicas spend some CPU with no request in flight (Ray's core worker).
    idle = proc_cpu.idle_ms_per_s(proc_cpu.Roles(), 2.0)
    assert idle.get("Ingress", 0) > 0, idle

    results = {
        "meta": {"date": "2026-01-01", "machine": "smoke", "cpu_count": 2, "python": "", "torch": "",
                 "ray": ""},
        "config": {"image_size": 96, "duration_s": 1.0, "warmup_s": 0.25, "concurrency": [1, 4],
                   "raw_duration_s": 0, "quick": True},
        "images": [{"name": i.name, "size": i.size_label} for i in images],
        "raw": {},
        "served": rows,
        "metrics": {},
        "idle_cpu_ms_per_s": idle,
    }  # fmt: skip
    paths = report.write(results, tmp_path / "smoke")
    assert json.loads(Path(paths["json"]).read_text())["headline"][model]["grpc"]["served_max_rps"] > 0
    md = Path(paths["md"]).read_text()
    assert "## Served (closed loop)" in md and f"| http | {model} | 4 |" in md
    assert "## Idle (ms of CPU per second" in md and f"| Ingress | {idle['Ingress']:.1f} |" in md
    with Image.open(paths["smoke-throughput"]) as png:
        assert png.format == "PNG"
