"""Deadlines: a request that cannot finish in time gets 504 / DEADLINE_EXCEEDED, and the segmenter drops
work whose deadline passed before it costs a forward pass.

HTTP callers set their deadline with ``x-request-timeout-ms`` (gRPC: ``x-timeout-ms`` metadata, tested in
``test_grpc.py``); both go through ``SegmentationCore.deadline``, capped by ``limits.request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.config import ModelSpec
from service.errors import DeadlineExceeded
from service.imaging.geometry import fit_to_policy
from service.training.shapes import make_sample
from tests.conftest import jpeg_bytes, png_bytes
from tests.integration.test_http import segment

pytestmark = pytest.mark.integration
MODEL = "unet-shapes"
GOOD = png_bytes(make_sample(9, (96, 128)).image)


def big_jpeg() -> bytes:
    rng = np.random.default_rng(1)
    return jpeg_bytes(np.repeat(np.repeat(rng.integers(0, 255, (150, 150, 3), np.uint8), 10, 0), 10, 1))


# --- over HTTP -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", ["1", "30"])
def test_http_deadline_too_short_is_a_504(service, timeout_ms):
    body = big_jpeg()  # 1500x1500: decode, forward and encode take far longer than 30 ms
    with service.http() as c:
        started = time.monotonic()
        r = segment(c, body, content_type="image/jpeg", **{"x-request-timeout-ms": timeout_ms})
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        error = r.json()["error"]
        assert error["code"] == "deadline_exceeded" and error["message"] and error["request_id"]
        assert elapsed < 5, f"a {timeout_ms} ms deadline took {elapsed:.1f}s to answer"
        assert segment(c, GOOD).status_code == 200  # and the service goes on


def test_http_deadline_long_enough_succeeds(service):
    with service.http() as c:
        r = segment(c, GOOD, **{"x-request-timeout-ms": "60000"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_http_malformed_deadline_is_a_400(service, value):
    with service.http() as c:
        r = segment(c, GOOD, **{"x-request-timeout-ms": value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_argument" and "x-request-timeout-ms" in error["message"]


# --- the segmenter drops expired work before the forward --------------------------------------------------


def null_spec(repository) -> ModelSpec:
    """The shipped model's classes and input policy on the null architecture (no weights to load)."""
    spec = repository.get(MODEL)
    return spec.model_copy(
        update={"name": "null-deadline-test", "architecture": "null", "arguments": {}, "weights": None}
    )


def prepared(spec: ModelSpec, deadline: float | None, request_id: str):
    from service.types import PreparedImage, SegmentOptions

    image = make_sample(1, (64, 80)).image
    pixels, geometry = fit_to_policy(image, spec.input)
    options = SegmentOptions(model=spec.name, request_id=request_id, deadline=deadline)
    return PreparedImage(pixels=pixels, geometry=geometry, options=options)


def unbatched(worker):
    """``ModelWorker._run_batch`` called directly, without the batcher: one list in, one out."""
    return lambda items: asyncio.run(worker._run_batch([(it, time.perf_counter()) for it in items]))


def test_segmenter_skips_the_forward_for_items_whose_deadline_passed(repository):
    """The model worker every segmenting replica runs (null model): expired items never reach the runner."""
    from service.worker import ModelWorker

    spec = null_spec(repository)
    segmenter = ModelWorker(spec, None)
    seen: list[list[str]] = []
    run = segmenter.runner.run

    def recording_run(items, queued_at):
        seen.append([it.options.request_id for it in items])
        return run(items, queued_at)

    segmenter.runner.run = recording_run
    now = time.time()
    items = [
        prepared(spec, now - 1, "expired-1"),
        prepared(spec, now + 60, "live-1"),
        prepared(spec, now - 0.001, "expired-2"),
        prepared(spec, None, "no-deadline"),
    ]
    results = unbatched(segmenter)(items)
    assert isinstance(results[0], DeadlineExceeded) and isinstance(results[2], DeadlineExceeded)
    assert results[1].labels.shape == (64, 80) and results[3].labels.shape == (64, 80)
    assert results[1].options.request_id == "live-1" and results[3].options.request_id == "no-deadline"
    assert seen == [["live-1", "no-deadline"]]
    assert segmenter.broken is None  # a dropped item is not a model failure


def test_segmenter_runs_nothing_when_the_whole_batch_expired(repository):
    from service.worker import ModelWorker

    spec = null_spec(repository)
    segmenter = ModelWorker(spec, None)
    calls = []
    segmenter.runner.run = lambda items, queued_at: calls.append(items) or []
    past = time.time() - 1
    results = unbatched(segmenter)([prepared(spec, past, f"expired-{i}") for i in range(3)])
    assert all(isinstance(r, DeadlineExceeded) for r in results) and calls == []
    assert "deadline" in results[0].message
