"""Large images served at full resolution, over real HTTP and gRPC, with the replica's memory measured.

An extra application "tiles" (at /tiles, one fused ingress replica, limits raised to 120 megapixels and
64 MiB bodies) serves two tiled models:

* ``tiles-null``: the null architecture (a 1x1 convolution) with weights that map the four flat
  colours of the test pictures to the four classes. Its answer is known without running it (each
  pixel's class is its colour), so a 10,000 x 10,000 picture checks every tile's place in the label
  map, while the replica's work is the service's own: decode, cut, forward, blend, argmax, encode.
* ``tiles-unet``: the shipped unet-shapes entry, tiled from 1024 px (the shipped entry: 2048), with a
  model pixel limit of 30 megapixels: the latency of small requests while a large one runs.

The replica's peak memory is its process's peak resident set (``VmHWM`` in /proc, what ``ru_maxrss``
reports), read before and after the large request.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.imaging.encode import decode_label_png
from service.training.shapes import make_sample
from tests.conftest import png_bytes, png_declaring
from tests.integration.apps import ROOT, deployment_replicas, extra_app, light_args, shipped_entry

pytestmark = pytest.mark.integration
APP = "tiles"
NULL = "tiles-null"
UNET = "tiles-unet"
COLOURS = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)
SIDE = 10_000
# The bound asserted on the replica's peak resident memory while it serves the 10,000 x 10,000 picture,
# over its peak before: the decoded RGB image (300 MB, and Pillow's 4-byte-per-pixel copy of it while
# decoding: 400 MB), the label map (100 MB) and its PNG encoding, two blending bands (2 x 4 classes x
# 960 rows x 10,000 columns x 4 bytes = 307 MB at most) and the tiles in flight.
PEAK_BOUND_BYTES = 1_400 * 1024 * 1024
MAX_PIXELS = 120_000_000


def null_weights() -> dict[str, torch.Tensor]:
    """logits = W x + b on pixels in 0..1: black -> 0, red -> 1, green -> 2, blue -> 3."""
    weight = torch.tensor([[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float32)
    return {"proj.weight": weight.view(4, 3, 1, 1), "proj.bias": torch.tensor([0.5, 0.0, 0.0, 0.0])}


def entries(weights: str) -> list[dict]:
    classes = [{"id": i, "name": f"c{i}", "color": COLOURS[i].tolist()} for i in range(4)]
    null = {
        "name": NULL,
        "task": "semantic",
        "architecture": "null",
        "weights": weights,
        "classes": classes,
        "input": {
            "size": 128,
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "tile": {
                "min_side": 1024,
                "size": 512,
                "overlap": 64,
                "blend": "constant",
                "tiles_per_request": 4,
            },
        },
        "batching": {"max_batch_size": 8, "max_batch_pixels": 4 * 512 * 512},
        "deployment": {"num_cpus": 0, "torch_threads": 1},
    }
    unet = shipped_entry("unet-shapes")
    unet = {
        **unet,
        "name": UNET,
        "weights": str(Path("unet-shapes") / "model.safetensors"),
        "input": {
            **unet["input"],
            "max_pixels": 30_000_000,
            "tile": {**unet["input"]["tile"], "min_side": 1024},
        },
        "deployment": {**unet["deployment"], "num_cpus": 0},
    }
    return [null, unet]


@pytest.fixture(scope="module")
def tiles_app(service):
    tag = f".test-tiles-{os.getpid()}"
    weights = ROOT / "models" / f"{tag}.safetensors"
    repository = ROOT / "models" / f"{tag}.yaml"
    save_file(null_weights(), str(weights))
    repository.write_text(yaml.safe_dump({"models": entries(weights.name)}, sort_keys=False))
    limits = {"max_image_pixels": MAX_PIXELS, "max_body_bytes": 64 * 1024 * 1024, "request_timeout_s": 120}
    try:
        with extra_app(service, APP, light_args(str(repository.relative_to(ROOT)), limits=limits)) as url:
            yield url
    finally:
        weights.unlink(missing_ok=True)
        repository.unlink(missing_ok=True)


def colour_picture(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobs of the four flat colours (a coarse random class map resized by nearest neighbour to a size
    no tile grid divides) and their classes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (height // 37 + 1, width // 37 + 1), dtype=np.uint8)
    classes = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.NEAREST))
    return COLOURS[classes], classes


def fast_png(image: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def ingress_pid() -> int:
    (pid,) = deployment_replicas("Ingress", APP).values()
    return pid


def test_ten_thousand_square_picture_within_the_memory_bound(tiles_app):
    image, classes = colour_picture(SIDE, SIDE, seed=0)
    body = fast_png(image)
    del image
    pid = ingress_pid()
    before = peak_rss(pid)
    t0 = time.monotonic()
    r = httpx.post(
        f"{tiles_app}/v1/models/{NULL}/segment",
        content=body,
        headers={"content-type": "image/png", "accept": "image/png"},
        timeout=300,
    )
    seconds = time.monotonic() - t0
    assert r.status_code == 200, r.text[:500]
    after = peak_rss(pid)
    labels = decode_label_png(r.content)
    mib = 2**20
    print(
        f"10000x10000 ({len(body) / mib:.1f} MiB PNG): {seconds:.1f} s; replica peak RSS "
        f"{before / mib:.0f} MiB before, {after / mib:.0f} MiB after (+{(after - before) / mib:.0f} MiB, "
        f"bound +{PEAK_BOUND_BYTES / mib:.0f} MiB); answer {len(r.content) / mib:.1f} MiB"
    )
    assert labels.shape == (SIDE, SIDE)
    assert (labels == classes).all()
    assert after - before <= PEAK_BOUND_BYTES
    assert ingress_pid() == pid


def test_large_answers_over_grpc(service, tiles_app):
    image, classes = colour_picture(4000, 6000, seed=1)
    stub = service.grpc_stub()  # 256 MiB message limits: a raw 24-megapixel map is 24 MB
    meta = [("application", APP)]
    for fmt in (pb.MASK_FORMAT_PNG, pb.MASK_FORMAT_RAW):
        response = stub.Segment(
            pb.SegmentRequest(model=NULL, image=fast_png(image), format=fmt), timeout=120, metadata=meta
        )
        assert (response.width, response.height) == (6000, 4000)
        if fmt == pb.MASK_FORMAT_PNG:
            labels = decode_label_png(response.mask_png)
        else:
            labels = np.frombuffer(response.mask_raw, np.uint8).reshape(4000, 6000)
        assert (labels == classes).all()


def test_bad_large_inputs_get_their_status_and_the_replica_keeps_serving(tiles_app):
    pid = ingress_pid()
    url = f"{tiles_app}/v1/models"
    headers = {"content-type": "image/png"}
    with httpx.Client(timeout=120) as c:
        over_app = c.post(f"{url}/{NULL}/segment", content=png_declaring(12_000, 12_000), headers=headers)
        over_model = c.post(f"{url}/{UNET}/segment", content=png_declaring(6_000, 6_000), headers=headers)
        image, _ = colour_picture(3000, 3000, seed=2)
        whole = png_bytes(image)
        truncated = c.post(f"{url}/{NULL}/segment", content=whole[: len(whole) // 2], headers=headers)
        good = c.post(f"{url}/{NULL}/segment", content=whole, headers={**headers, "accept": "image/png"})
    assert over_app.status_code == 413 and over_app.json()["error"]["code"] == "payload_too_large"
    assert f"limit of {MAX_PIXELS} pixels" in over_app.json()["error"]["message"]
    assert over_model.status_code == 413
    assert f"'{UNET}' segments images of up to 30000000 pixels" in over_model.json()["error"]["message"]
    assert truncated.status_code == 400 and truncated.json()["error"]["code"] == "invalid_image"
    assert good.status_code == 200 and decode_label_png(good.content).shape == (3000, 3000)
    assert ingress_pid() == pid


def test_small_requests_while_a_large_one_runs(tiles_app):
    """p50 / p99 of 128 x 128 requests from two clients, alone and while a 1536 x 2048 picture (48 tiles
    of 256 px, two at a time) is segmented by the same replica."""
    url = f"{tiles_app}/v1/models/{UNET}/segment"
    smalls = [png_bytes(make_sample(900 + i, (128, 128)).image) for i in range(8)]
    large = png_bytes(make_sample(7, (1536, 2048)).image)
    headers = {"content-type": "image/png", "accept": "image/png"}

    def run_clients(until: threading.Event | float) -> list[float]:
        latencies: list[float] = []

        def client(k: int) -> None:
            with httpx.Client(timeout=120) as c:
                i = k
                while not (
                    until.is_set() if isinstance(until, threading.Event) else time.monotonic() > until
                ):
                    t0 = time.monotonic()
                    assert c.post(url, content=smalls[i % len(smalls)], headers=headers).status_code == 200
                    latencies.append(time.monotonic() - t0)
                    i += 2

        threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return latencies

    alone = run_clients(time.monotonic() + 4)
    done = threading.Event()
    result: dict = {}

    def send_large() -> None:
        t0 = time.monotonic()
        result["response"] = httpx.post(url, content=large, headers=headers, timeout=300)
        result["seconds"] = time.monotonic() - t0
        done.set()

    sender = threading.Thread(target=send_large)
    sender.start()
    time.sleep(0.5)  # the large request is decoded and its first tiles queued
    during = run_clients(done)
    sender.join()
    assert result["response"].status_code == 200
    assert decode_label_png(result["response"].content).shape == (1536, 2048)
    p = {name: np.percentile(x, [50, 99]) * 1000 for name, x in (("alone", alone), ("during", during))}
    print(
        f"small requests alone: n={len(alone)} p50 {p['alone'][0]:.0f} ms p99 {p['alone'][1]:.0f} ms; "
        f"during a {result['seconds']:.1f} s large request: n={len(during)} p50 {p['during'][0]:.0f} ms "
        f"p99 {p['during'][1]:.0f} ms"
    )
    assert len(during) >= 10  # small requests kept being answered while the large one ran
    assert p["during"][1] / 1000 < result["seconds"] / 4  # never queued behind the whole image
