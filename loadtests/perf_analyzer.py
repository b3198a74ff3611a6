"""Triton's perf_analyzer against our Open Inference Protocol endpoints, beside our own closed-loop load
generator on /v1, in one run on one service: the numbers of docs/benchmark.md, "perf_analyzer".

    python loadtests/perf_analyzer.py --perf-analyzer "<command that runs perf_analyzer>" \
        [--concurrency 1,2,4] [--image-size 512x384] [--measurement-ms 4000]

perf_analyzer is the ``perf-analyzer`` PyPI wheel (``perf_analyzer/bin/perf_analyzer``). It needs glibc
2.38; on an older system give the command that runs it with a newer loader (docs/benchmark.md says
how). Both tools send the same JPEG to ``unet-shapes`` with ``c`` requests in flight: perf_analyzer as
the OIP ``image`` input (BYTES) over HTTP and gRPC, ours as ``/v1`` segment requests (label PNG back).
Results: a markdown table on stdout and JSON in ``loadtests/results/tmp/perf_analyzer.json``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.closed_loop import PointSpec, measure  # noqa: E402
from loadtests.images import TestImage, jpeg, real_image  # noqa: E402
from loadtests.local_service import LocalService  # noqa: E402

MODEL = "unet-shapes"


def input_data(image: bytes, folder: Path) -> Path:
    """perf_analyzer's --input-data: the BYTES element as base64 of its 4-byte length and its bytes."""
    path = folder / "input.json"
    element = struct.pack("<I", len(image)) + image
    # The shape of one request's tensor: the metadata's [-1] leaves it to the caller.
    content = {"content": {"b64": base64.b64encode(element).decode()}, "shape": [1]}
    path.write_text(json.dumps({"data": [{"image": content}]}))
    return path


def run_perf_analyzer(
    command: list[str],
    protocol: str,
    target: str,
    data: Path,
    concurrency: int,
    measurement_ms: int,
    folder: Path,
) -> dict[str, Any]:
    report = folder / f"pa-{protocol}-{concurrency}.csv"
    args = [
        *command, "-m", MODEL, "-i", protocol, "-u", target, "--input-data", str(data),
        "--concurrency-range", f"{concurrency}:{concurrency}", "-p", str(measurement_ms),
        "-s", "50", "-r", "8", "-f", str(report),
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed: {done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (row,) = list(csv.DictReader(report.open()))
    return {
        "tool": "perf_analyzer",
        "protocol": f"oip-{protocol}",
        "concurrency": concurrency,
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def ours(service: LocalService, image: TestImage, concurrency: list[int], duration_s: float) -> list[dict]:
    points = [PointSpec(protocol, MODEL, c) for protocol in ("http", "grpc") for c in concurrency]
    results = measure(
        points, [image], url=service.url, grpc_target=service.grpc_target, warmup_s=3, duration_s=duration_s
    )
    rows = []
    for point, result in zip(points, results, strict=True):
        rows.append(
            {
                "tool": "closed_loop",
                "protocol": f"v1-{point.protocol}",
                "concurrency": point.concurrency,
                "throughput_rps": result["throughput_rps"],
                "p50_ms": result["p50_ms"],
                "p99_ms": result["p99_ms"],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| tool | endpoint | c | req/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["protocol"])):
        lines.append(
            f"| {r['tool']} | {r['protocol']} | {r['concurrency']} | {r['throughput_rps']:.1f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", required=True, help="the command that runs perf_analyzer")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--image-size", default="512x384")
    parser.add_argument("--measurement-ms", type=int, default=4000)
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    width, height = (int(v) for v in args.image_size.split("x"))
    from PIL import Image

    picture = Image.fromarray(real_image("astronaut")).resize((width, height), Image.Resampling.BILINEAR)
    image = TestImage("astronaut", jpeg(np.asarray(picture)), "image/jpeg", width, height)
    service = LocalService(ROOT / "models" / "repository.yaml", [MODEL], None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            data = input_data(image.data, folder)
            command = shlex.split(args.perf_analyzer)
            urls = (("http", service.url.removeprefix("http://")), ("grpc", service.grpc_target))
            rows = []
            for c in concurrency:  # interleaved, so a drift in the machine's load hits every line alike
                for protocol, target in urls:
                    rows.append(
                        run_perf_analyzer(command, protocol, target, data, c, args.measurement_ms, folder)
                    )
                rows += ours(service, image, [c], duration_s=args.measurement_ms / 1000 * 3)
    finally:
        service.stop()
    out = ROOT / "loadtests" / "results" / "tmp"
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf_analyzer.json").write_text(
        json.dumps({"image": f"{width}x{height} JPEG", "rows": rows}, indent=1)
    )
    print(table(rows))


if __name__ == "__main__":
    main()
