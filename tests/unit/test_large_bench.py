"""The benchmark's large-image point without a service: its raw path, its report section, its options."""

from __future__ import annotations

import yaml

from loadtests import bench_args, large
from tests.tiling_helpers import miou

CLASSES = [{"id": i, "name": f"c{i}", "color": [i, i, i]} for i in range(4)]


def test_large_image_options():
    assert bench_args.parse_args([]).large_image == 4096
    assert bench_args.parse_args(["--quick"]).large_image == 2048
    assert bench_args.parse_args(["--large-image", "0"]).large_image == 0


def test_raw_tiled_point_and_its_report_section(tmp_path):
    entry = {
        "name": "tiled-null",
        "task": "semantic",
        "architecture": "null",
        "classes": CLASSES,
        "input": {"tile": {"min_side": 256, "size": 128, "overlap": 32}},
    }
    (tmp_path / "repository.yaml").write_text(yaml.safe_dump({"models": [entry]}))
    repository = tmp_path / "repository.yaml"
    assert large.tiled_model(repository, ["tiled-null"]) == "tiled-null"
    image, truth = large.shapes_scene(300, 400, seed=0)
    worker = large.worker_for(repository, "tiled-null")
    raw = large.raw_tiled(worker, image, repeats=1)
    assert raw["labels"].shape == (300, 400) and raw["seconds"] > 0
    assert miou(raw["labels"], truth, 4) < 0.5  # the null model says background everywhere
    point = {
        "model": "tiled-null", "size": "400x300", "png_bytes": 2**20, "tiles": 12, "repeats": 1,
        "tile": worker.spec.input.tile.model_dump(), "raw_s": raw["seconds"], "raw_mp_per_s": 0.12,
        "served_s": 2.0, "served_mp_per_s": 0.06, "agreement": 1.0, "raw_timings_ms": {},
    }  # fmt: skip
    md = "\n".join(large.section(point))
    assert "## Large image (tiled)" in md and "| served (HTTP) | 2.00 | 0.060 | 0.50 |" in md
    assert "100.0000% of pixels" in md
    assert large.section(None) == []
