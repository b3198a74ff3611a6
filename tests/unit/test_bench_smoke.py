"""The load-test and benchmark code paths at tiny size, without Ray (so they do not rot).

Smoke only: the numbers measured here mean nothing. The served side runs against an in-process
HTTP mock and an in-process gRPC server; tests/integration/test_loadtest_smoke.py runs it against
the real service.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import time
from concurrent import futures

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from loadtests import bench, bench_args, closed_loop, promparse, raw, raw_phase, report
from loadtests.checks import check_grpc_answer, check_http_answer, check_mask_png, check_png_answer
from loadtests.common import DEFAULT_REPOSITORY, parse_int_list, parse_size, parse_weighted, servable_models
from loadtests.images import TestImage, Workload, make_images
from loadtests.repository import edit_repository, null_entry, write_repository
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from service.imaging.encode import encode_label_png


def mask_for(data: bytes) -> tuple[bytes, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return encode_label_png(np.zeros((height, width), np.uint8)), width, height


def answer_json(model: str, data: bytes, batch_size: int = 1) -> dict:
    png, width, height = mask_for(data)
    return {
        "model": model,
        "task": "semantic",
        "width": width,
        "height": height,
        "mask": {"format": "png", "media_type": "image/png", "encoding": "base64",
                 "data": base64.b64encode(png).decode()},
        "batch_size": batch_size,
        "timings_ms": {"decode": 1.0, "preprocess": 0.5, "queue": 0.1, "forward": 2.0, "postprocess": 1.0,
                       "encode": 0.5, "total": 6.0},
    }  # fmt: skip


@pytest.fixture(scope="module")
def images() -> list[TestImage]:
    return make_images((64, 48), seed=3, synthetic=2)


# --- parsing and inputs -------------------------------------------------------------------------------


def test_parsers():
    assert parse_weighted("a:3, b ,c:0.5") == [("a", 3.0), ("b", 1.0), ("c", 0.5)]
    with pytest.raises(ValueError):
        parse_weighted("a:0")
    assert parse_size("512x384") == (512, 384)
    with pytest.raises(ValueError):
        parse_size("512")
    assert parse_int_list("1,4,16") == [1, 4, 16]
    assert parse_int_list("1-3,8") == [1, 2, 3, 8]
    assert raw_phase.parse_layouts("1x2, 2x1") == [(1, 2), (2, 1)]
    assert raw_phase.default_layouts(2, 1) == [(1, 2), (1, 1), (2, 1)]
    assert raw_phase.raw_batch_sizes("", 8) == (1, 2, 4, 8)
    assert raw_phase.raw_batch_sizes("", 6) == (1, 2, 4, 6)
    assert raw_phase.raw_batch_sizes("1-3", 8) == (1, 2, 3)
    args = bench_args.parse_args(
        ["--peers", "litserve", "--peer-args", "litserve=--fast-queue --batch-timeout-s 0.01"]
    )
    assert args.peers == ["litserve"] and args.peer_args == {
        "litserve": ("--fast-queue", "--batch-timeout-s", "0.01")
    }
    assert bench_args.parse_args(["--no-peers"]).peers == []
    assert bench_args.parse_args(["--protocols", "grpc"]).protocols == ["grpc"]
    for bad in (["--peers", "torchserve"], ["--peer-args", "nobody=--x"], ["--protocols", "udp"]):
        with pytest.raises(SystemExit):
            bench_args.parse_args(bad)


def test_images_are_seeded_real_and_synthetic(images):
    again = make_images((64, 48), seed=3, synthetic=2)
    assert [i.data for i in images] == [i.data for i in again]
    assert [i.name for i in images] == ["astronaut", "coffee", "chelsea", "shapes-0", "shapes-1"]
    assert {i.content_type for i in images} == {"image/jpeg", "image/png"}
    for image in images:
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert decoded.size == (64, 48)
    other = make_images((64, 48), seed=4, synthetic=2, real=False)
    assert other[0].data != images[3].data


def test_workload_mix_is_weighted_and_seeded():
    workload = Workload.build([("a", 3.0), ("b", 1.0)], "32x32:1,48x32:3", seed=1, synthetic=1)
    picks = [workload.pick(random.Random(7)) for _ in range(3)]
    assert picks == [workload.pick(random.Random(7)) for _ in range(3)]
    rng = random.Random(0)
    many = [workload.pick(rng) for _ in range(2000)]
    share_a = sum(m == "a" for m, _ in many) / len(many)
    share_wide = sum(i.size_label == "48x32" for _, i in many) / len(many)
    assert 0.7 < share_a < 0.8 and 0.7 < share_wide < 0.8


def test_servable_models_skip_missing_weights(tmp_path):
    (tmp_path / "repository.yaml").write_text(
        "models:\n"
        "  - {name: here, task: semantic, architecture: unet, weights: here.safetensors,\n"
        "     classes: [{id: 0, name: bg, color: [0, 0, 0]}]}\n"
        "  - {name: gone, task: semantic, architecture: unet, weights: gone.safetensors,\n"
        "     classes: [{id: 0, name: bg, color: [0, 0, 0]}]}\n"
        "  - {name: nothing, task: semantic, architecture: 'null',\n"
        "     classes: [{id: 0, name: bg, color: [0, 0, 0]}]}\n"
    )
    (tmp_path / "here.safetensors").write_bytes(b"x")
    ok, skipped = servable_models(tmp_path / "repository.yaml")
    assert ok == ["here", "nothing"]
    assert list(skipped) == ["gone"] and "weights missing" in skipped["gone"]


# --- answer checks ------------------------------------------------------------------------------------


def test_answer_checks(images):
    image = images[0]
    png, width, height = mask_for(image.data)
    assert check_mask_png(png, width, height) is None
    assert "expected 10x10" in check_mask_png(png, 10, 10)
    assert check_mask_png(b"not a png", width, height).startswith("mask PNG does not decode")
    assert check_mask_png(image.data, width, height) == "mask is JPEG, not PNG"

    good = json.dumps(answer_json("m", image.data, batch_size=3)).encode()
    checked = check_http_answer(200, good, image, "m")
    assert checked.reason is None and checked.batch_size == 3 and checked.timings_ms["total"] == 6.0
    assert check_http_answer(200, good, image, "other").reason == "answer is for model 'm'"
    error = json.dumps({"error": {"code": "overloaded", "message": "busy"}}).encode()
    assert check_http_answer(503, error, image, "m").reason == "HTTP 503 overloaded"
    assert check_http_answer(200, b"<html>", image, "m").reason == "HTTP 200 with a body that is not JSON"

    # Accept: image/png (ours and the peers): the PNG itself is the body
    assert check_png_answer(200, png, image, "3") == type(checked)(None, {}, 3)
    assert check_png_answer(200, png, image, verify_png=False).reason is None
    assert check_png_answer(200, b"{}", image, verify_png=False).reason == "body is not a PNG"
    assert check_png_answer(200, png[:20], image).reason.startswith("mask PNG does not decode")
    assert check_png_answer(422, b'{"detail": []}', image).reason == "HTTP 422"

    response = pb.SegmentResponse(model="m", width=width, height=height, mask_png=png, batch_size=2)
    response.timings_ms["total"] = 5.0
    assert check_grpc_answer(response, image, "m").reason is None
    response.mask_png = b""
    assert check_grpc_answer(response, image, "m").reason == "no mask in the answer"


# --- the temporary repository and the raw model --------------------------------------------------------


def test_write_repository_adds_a_null_model(tmp_path):
    from service.config import load_repository

    available, _ = servable_models()
    path, null_name = write_repository(DEFAULT_REPOSITORY, available[:1], True, tmp_path / "r")
    repository = load_repository(path)
    assert repository.names() == [*available[:1], "null"] and null_name == "null"
    null = repository.get("null")
    assert null.architecture == "null" and null.weights is None and null.task == "semantic"
    reference = next(m for m in load_repository(DEFAULT_REPOSITORY).models if m.task == "semantic")
    assert null.classes == reference.classes and null.input == reference.input
    for spec in repository.models:
        if spec.weights:
            assert repository.weights_path(spec).is_file()  # inside the temporary root


def test_null_model_waiting_per_image_stands_in_for_a_device(tmp_path):
    """``null-device`` (loadtests/scale.py): the null model's answer, after a wait per image of the batch."""
    import torch

    from service.config import load_repository
    from service.models.registry import build_model

    path, null_name = write_repository(DEFAULT_REPOSITORY, [], True, tmp_path / "r")
    edit_repository(path, lambda entries: entries.append(null_entry(entries[-1], "null-device", 40)))
    repository = load_repository(path)
    waiting, plain = build_model(repository.get("null-device")), build_model(repository.get(null_name))
    x = torch.rand(3, 3, 32, 32)
    start = time.perf_counter()
    out = waiting(x)
    assert time.perf_counter() - start >= 3 * 0.040  # sleep never returns early: this cannot flake
    assert torch.equal(out, plain(x))
    with pytest.raises(ValueError, match="device_ms_per_image"):
        build_model(
            repository.get("null-device").model_copy(update={"arguments": {"device_ms_per_image": -1}})
        )


def test_raw_in_process(tmp_path, images):
    path, _ = write_repository(DEFAULT_REPOSITORY, [], True, tmp_path / "r")
    config = raw.RawConfig(
        path, "null", tuple(images), (1, 3), duration_s=0.02, min_iterations=2, warmup_iterations=1
    )
    out = raw.measure_in_process(config)
    assert out["input_shape"] == [96, 128, 3] and out["original_shape"] == [48, 64]  # letterbox 128, /16
    assert set(out["batches"]) == {"1", "3"}
    for row in out["batches"].values():
        assert row["images_per_s"] > 0 and row["iterations"] >= 2
        assert row["images"] == row["iterations"] * row["batch_size"]
    lay = raw_phase.aggregate([out, out], 2, 1)
    assert lay["layout"] == "2x1"
    assert lay["batches"]["1"]["images_per_s"] == pytest.approx(2 * out["batches"]["1"]["images_per_s"])
    assert raw_phase.best([lay])["layout"] == "2x1"


def test_bench_main_raw_only_spawns_processes(tmp_path):
    """bench.main end to end without a service: temporary repository, 2 spawned processes, report."""
    code = bench.main(
        ["--quick", "--no-served", "--no-peers", "--models", "null", "--raw-layouts", "2x1",
         "--raw-batch-sizes", "1,2", "--raw-duration-s", "0.05", "--images", "1", "--image-size", "64",
         "--out-dir", str(tmp_path), "--label", "unit"]
    )  # fmt: skip
    assert code == 0
    [result] = tmp_path.glob("*-unit.json")
    data = json.loads(result.read_text())
    assert data["config"]["models"] == ["null"] and data["served"] == []
    layout = data["raw"]["null"]["layouts"][0]
    assert layout["layout"] == "2x1" and set(layout["batches"]) == {"1", "2"}
    assert data["raw"]["null"]["best"]["images_per_s"] > 0
    assert (tmp_path / f"{result.stem}.md").read_text().startswith("# Benchmark")
    assert not (bench.TMP_DIR / f"bench-{os.getpid()}").exists()  # the temporary repository is removed


# --- the closed loop ----------------------------------------------------------------------------------


def test_closed_loop_http_counts_successes_and_failures(images):
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] % 5 == 0:
            return httpx.Response(503, json={"error": {"code": "overloaded", "message": "busy"}})
        model = request.url.path.split("/")[3]
        return httpx.Response(200, json=answer_json(model, request.content, batch_size=2))

    [row] = closed_loop.measure(
        [closed_loop.PointSpec("http-json", "m", 3)],
        images,
        url="http://test",
        warmup_s=0.05,
        duration_s=1.0,
        verify_png=True,
        http_transport=httpx.MockTransport(handler),
        log=lambda _: None,
    )
    assert row["requests"] > 5 and row["errors"] > 0
    assert set(row["error_reasons"]) == {"HTTP 503 overloaded"}
    assert row["throughput_rps"] == pytest.approx(row["requests"] / 1.0)
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["mean_batch_size"] == pytest.approx(2.0)
    assert row["stage_mean_ms"]["hops"] == pytest.approx(0.9)  # total 6 - the stages' 5.1
    assert row["outside_server_ms"] is not None


class FakeSegmentation(pb_grpc.SegmentationServicer):
    def Segment(self, request, context):
        if request.model != "m":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        png, width, height = mask_for(request.image)
        return pb.SegmentResponse(
            model=request.model,
            width=width,
            height=height,
            mask_png=png,
            batch_size=1,
            timings_ms={"total": 1.0},
        )


def test_closed_loop_grpc(images):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SegmentationServicer_to_server(FakeSegmentation(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        ok, missing = closed_loop.measure(
            [closed_loop.PointSpec("grpc", "m", 2), closed_loop.PointSpec("grpc", "nope", 1)],
            images,
            grpc_target=f"127.0.0.1:{port}",
            warmup_s=0.3,
            duration_s=1.5,  # a loaded CI machine must still finish a call inside the window
            verify_png=True,
            log=lambda _: None,
        )
    finally:
        server.stop(None)
    assert ok["requests"] > 0 and ok["errors"] == 0 and ok["mean_batch_size"] == 1.0
    assert missing["requests"] == 0 and set(missing["error_reasons"]) == {"gRPC NOT_FOUND"}


# --- metrics and the report ---------------------------------------------------------------------------

SCRAPE = """\
# HELP ray_serve_actual_batch_size The actual number of requests in each batch.
# TYPE ray_serve_actual_batch_size histogram
ray_serve_actual_batch_size_bucket{deployment="Segmenter-a",replica="r1",le="1.0"} 2.0
ray_serve_actual_batch_size_bucket{deployment="Segmenter-a",replica="r1",le="2.0"} 3.0
ray_serve_actual_batch_size_bucket{deployment="Segmenter-a",replica="r1",le="4.0"} 4.0
ray_serve_actual_batch_size_bucket{deployment="Segmenter-a",replica="r1",le="+Inf"} 4.0
ray_serve_actual_batch_size_count{deployment="Segmenter-a",replica="r1"} 4.0
ray_serve_actual_batch_size_sum{deployment="Segmenter-a",replica="r1"} 4.5
# HELP ray_seg_batch_size Images in one forward pass.
# TYPE ray_seg_batch_size histogram
ray_seg_batch_size_bucket{deployment="Segmenter-a",model="a",replica="r1",le="1.0"} 1.0
ray_seg_batch_size_bucket{deployment="Segmenter-a",model="a",replica="r1",le="+Inf"} 1.0
ray_seg_batch_size_count{deployment="Segmenter-a",model="a",replica="r1"} 1.0
ray_seg_batch_size_sum{deployment="Segmenter-a",model="a",replica="r1"} 0.5
ray_seg_batch_size_bucket{deployment="Segmenter-a",model="a",replica="r2",le="1.0"} 1.0
ray_seg_batch_size_bucket{deployment="Segmenter-a",model="a",replica="r2",le="+Inf"} 1.0
ray_seg_batch_size_count{deployment="Segmenter-a",model="a",replica="r2"} 1.0
ray_seg_batch_size_sum{deployment="Segmenter-a",model="a",replica="r2"} 0.5
# HELP ray_other_total Something else.
# TYPE ray_other_total counter
ray_other_total 3.0
"""


def test_promparse_batch_sizes_from_buckets():
    after = promparse.histograms(SCRAPE)
    assert set(after) == {"ray_serve_actual_batch_size", "ray_seg_batch_size"}
    seg = after["ray_seg_batch_size"]["deployment=Segmenter-a,model=a"]
    assert seg["count"] == 2.0  # summed over replicas
    hist = promparse.delta({}, after)
    means = promparse.mean_batch_sizes(hist)
    # Batches 1, 1, 2 and one of 3-4 (taken as 3.5): mean 7.5 / 4, whatever the exported _sum says.
    assert means["ray_serve_actual_batch_size"]["deployment=Segmenter-a"] == pytest.approx(7.5 / 4)
    assert means["ray_seg_batch_size"]["deployment=Segmenter-a,model=a"] == 1.0
    assert promparse.delta(after, after) == {}


def served_row(protocol: str, model: str, c: int, rps: float) -> dict:
    return {
        "protocol": protocol, "model": model, "concurrency": c, "requests": int(rps * 2), "errors": 0,
        "error_reasons": {}, "throughput_rps": rps, "p50_ms": 1000 * c / rps, "p95_ms": 1100 * c / rps,
        "p99_ms": 1200 * c / rps, "mean_ms": 1000 * c / rps, "max_ms": 1300 * c / rps,
        "stage_mean_ms": {"decode": 2.0, "forward": 30.0, "total": 50.0, "hops": 10.0},
        "outside_server_ms": 12.0, "mean_batch_size": 1.0, "client_cpu_fraction": 0.1,
        "machine_cpu_busy_fraction": 0.9,
    }  # fmt: skip


def test_report_json_markdown_and_plots(tmp_path):
    layout = {
        "layout": "1x1", "processes": 1, "threads": 1, "device": "cpu", "input_shape": [128, 128, 3],
        "original_shape": [256, 256],
        "batches": {"1": {"batch_size": 1, "images": 10, "images_per_s": 20.0, "batch_ms_mean": 50.0,
                          "batch_ms_p50": 50.0, "ms_per_image": 50.0, "forward_ms_mean": 40.0,
                          "postprocess_ms_mean": 10.0}},
    }  # fmt: skip
    results = {
        "meta": {"date": "2026-01-01", "machine": "t", "cpu_count": 2, "python": "3.11", "torch": "x",
                 "ray": "y"},
        "config": {"image_size": 256, "duration_s": 2.0, "warmup_s": 0.5, "concurrency": [1, 4],
                   "raw_duration_s": 0.3, "quick": True},
        "skipped_models": {"gone": "weights missing"},
        "images": [{"name": "shapes-0", "size": "256x256", "bytes": 1, "content_type": "image/png"}],
        "raw": {"a": {"layouts": [layout], "best": {"layout": "1x1", "batch_size": 1, "images_per_s": 20.0},
                      "replica_threads": 1, "batch1_latency_ms": 50.0, "batch1_layout": "1x1"}},
        "served": [served_row(p, m, c, r) for p in ("http", "grpc") for m, c, r in
                   (("a", 1, 10.0), ("a", 4, 16.0), ("null", 1, 30.0), ("null", 4, 40.0))],
        "metrics": {"mean_batch_size": {"ray_seg_batch_size": {"model=a": 1.0}}},
    }  # fmt: skip
    results["served"][1]["cpu_ms_per_request"] = {"Segmenter-a": 30.0, "Ingress": 7.5, "proxies": 4.0}
    paths = report.write(results, tmp_path / "2026-01-01-t")
    data = json.loads((tmp_path / "2026-01-01-t.json").read_text())
    head = data["headline"]["a"]["http"]
    assert head["served_max_rps"] == 16.0 and head["saturation_concurrency"] == 4
    assert head["served_raw_ratio"] == pytest.approx(0.8)
    assert head["p50_overhead_low_ms"] == pytest.approx(100.0 - 50.0)
    assert "served_raw_ratio" not in data["headline"]["null"]["http"]  # no raw numbers for it here
    md = (tmp_path / "2026-01-01-t.md").read_text()
    assert "## Headline" in md and "| a | http | 20.00 (1x1, b1) | 16.00 (c=4) | 0.80 |" in md
    assert "Skipped models: gone" in md and "Quick smoke run" in md
    # CPU by process, at the best point of the one line that has it (a, http, c=4): largest first
    assert "| model | protocol | c | req/s | Segmenter-a | Ingress | proxies | all |" in md
    assert "| a | http | 4 | 16.00 | 30.0 | 7.5 | 4.0 | 41.5 |" in md
    for kind in ("throughput", "p99", "ratio"):
        with Image.open(paths[f"2026-01-01-t-{kind}"]) as png:
            assert png.format == "PNG" and png.size[0] > 300


def test_results_keep_the_idle_cpu_the_served_phase_measured():
    """The idle CPU (``served.run_served``) reaches the JSON and the report's Idle section."""
    args = bench_args.parse_args(["--quick"])
    measured = {
        "models": ["m"],
        "null_name": None,
        "images": [],
        "peer_models": [],
        "idle_cpu_ms_per_s": {"Ingress": 12.5, "haproxy": 1.0, "load generator": 3.0},
    }
    results = bench.results_of(args, bench_args.Plan(["m"], {}, False), measured, {}, time.monotonic())
    assert results["idle_cpu_ms_per_s"] == measured["idle_cpu_ms_per_s"]
    section = "\n".join(report.idle_section(results["idle_cpu_ms_per_s"]))
    assert "| Ingress | 12.5 |" in section and "| all | 13.5 |" in section  # not the load generator


def test_levers_configurations_and_the_no_borrowing_repository(tmp_path):
    from loadtests import levers
    from service.config import load_repository, parse_app_settings

    assert levers.configuration("fused-haproxy") == ({}, {}, {})  # the shipped configuration
    _, env, _ = levers.configuration("haproxy-one-thread")  # cumulative: every lever from the shipped one
    assert (
        env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0" and env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    )
    _, env, _ = levers.configuration("no-borrowing")  # standalone: the shipped one, nothing added
    assert env == {}
    path, _ = write_repository(DEFAULT_REPOSITORY, ["unet-shapes"], True, tmp_path / "r")
    assert load_repository(path).get("unet-shapes").deployment.borrow_idle_cores  # shipped: borrows
    changes = levers.DEPLOYMENT_CHANGES["no-borrowing"]
    edit_repository(path, lambda entries: levers._change_deployments(entries, changes))
    assert not any(spec.deployment.borrow_idle_cores for spec in load_repository(path).models)
    app, env, _ = levers.configuration("one-replica")  # the shipped args with one ingress replica
    assert env == {} and parse_app_settings(app).ingress.num_replicas == 1
