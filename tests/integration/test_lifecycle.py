"""``segserve serve`` started and stopped the way a person does it, on the real service.

One test walks the whole life, to start Ray only three times:

1. start; requests in flight over HTTP (a slow upload, large images) and gRPC (a unary call, a stream
   that sends its second frame after the signal); Ctrl-C (SIGINT to the process group): every one of
   them gets its answer, then within the documented bound the supervisor exits 0, no process of the
   Ray session is left (haproxy included) and the ports are free;
2. start again on the same ports and serve; then SIGKILL to the supervisor's group (its service process
   drains and stops on its own);
3. start at once on the same ports again: it waits for the earlier session if that still holds a port,
   then serves; a double Ctrl-C stops it at once, leaving no process behind.

The port checks and the drain without Ray: tests/unit/test_lifecycle.py.
"""

from __future__ import annotations

import io
import signal
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from loadtests.client import channel_options, pb, pb_grpc
from loadtests.serve_process import ServeProcess
from service.lifecycle.supervisor import STOP_MARGIN_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRAIN_S = 20.0
STOP_BOUND_S = DRAIN_S + STOP_MARGIN_S  # the documented bound: drain, then Serve, Ray and the sweep
ARGS = ("--drain-timeout-s", str(DRAIN_S))


def png(width: int, height: int, seed: int) -> bytes:
    """Noise: slow to decode and encode, so requests are still in flight when the signal comes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class InFlight:
    """Requests started before the signal; each records (started, ended, outcome)."""

    def __init__(self, service: ServeProcess) -> None:
        self.service = service
        self.signalled = threading.Event()
        self.results: dict[str, tuple[float, float, str]] = {}
        self.threads: list[threading.Thread] = []
        self.big = png(1600, 1200, 1)

    def start(self) -> None:
        jobs = {
            "http slow upload": self.http_slow_upload,
            "http large 1": lambda: self.http_post("panoptic-shapes", self.big),
            "http large 2": lambda: self.http_post("unet-shapes", self.big),
            "grpc unary": self.grpc_unary,
            "grpc stream": self.grpc_stream,
        }
        for name, job in jobs.items():
            thread = threading.Thread(target=self._run, args=(name, job), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, name: str, job) -> None:
        started = time.monotonic()
        try:
            outcome = job()
        except Exception as e:  # the outcome is what the test asserts on
            outcome = f"{type(e).__name__}: {e}"[:300]
        self.results[name] = (started, time.monotonic(), outcome)

    def http_post(self, model: str, body, timeout_s: float = 120) -> str:
        response = httpx.post(
            f"{self.service.url}/v1/models/{model}/segment",
            content=body,
            headers={"content-type": "image/png", "accept": "image/png"},
            timeout=timeout_s,
        )
        ok = response.status_code == 200 and response.content.startswith(b"\x89PNG")
        return "ok" if ok else f"HTTP {response.status_code}: {response.text[:200]}"

    def http_slow_upload(self) -> str:
        """The body arrives over ~2.5 s, the signal comes in the middle of it."""
        body = png(256, 256, 2)
        step = len(body) // 10 + 1

        def chunks():
            for i in range(0, len(body), step):
                yield body[i : i + step]
                time.sleep(0.25)

        return self.http_post("unet-shapes", chunks())

    def grpc_unary(self) -> str:
        with grpc.insecure_channel(self.service.grpc_target, options=channel_options()) as channel:
            stub = pb_grpc.SegmentationStub(channel)
            request = pb.SegmentRequest(model="panoptic-shapes", image=self.big, content_type="image/png")
            response = stub.Segment(request, timeout=120)
            return "ok" if response.mask_png.startswith(b"\x89PNG") else "no mask"

    def grpc_stream(self) -> str:
        """Frame 1 answered before the signal, frame 2 sent after it: the open stream is served on."""
        image = png(256, 256, 3)
        first_answered = threading.Event()

        def frames():
            yield pb.SegmentRequest(model="unet-shapes", image=image, frame_id="1")
            first_answered.wait(60)
            self.signalled.wait(60)
            time.sleep(0.5)
            yield pb.SegmentRequest(model="unet-shapes", image=image, frame_id="2")

        with grpc.insecure_channel(self.service.grpc_target, options=channel_options()) as channel:
            stub = pb_grpc.SegmentationStub(channel)
            answered = []
            for response in stub.SegmentStream(frames(), timeout=120):
                if response.HasField("error") or not response.mask_png:
                    return f"frame {response.frame_id}: {response.error.code}"
                answered.append(response.frame_id)
                first_answered.set()
            return "ok" if answered == ["1", "2"] else f"answered {answered}"

    def join(self, timeout_s: float) -> None:
        for thread in self.threads:
            thread.join(timeout_s)


def served(service: ServeProcess) -> None:
    """One HTTP and one gRPC request answered by this service."""
    body = png(128, 96, 4)
    response = httpx.post(
        f"{service.url}/v1/models/unet-shapes/segment",
        content=body,
        headers={"accept": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    with grpc.insecure_channel(service.grpc_target, options=channel_options()) as channel:
        answer = pb_grpc.SegmentationStub(channel).Segment(pb.SegmentRequest(model="unet-shapes", image=body))
    assert (answer.width, answer.height) == (128, 96)


def assert_gone(service: ServeProcess) -> None:
    assert service.session() == [], f"processes left: {service.session()}"
    assert service.ports_in_use() == []


def test_ctrl_c_drains_then_nothing_is_left_and_the_ports_serve_again():
    a = ServeProcess(extra_args=ARGS, echo=True)
    ports = dict(http_port=a.http_port, grpc_port=a.grpc_port, metrics_port=a.metrics_port)
    services = [a]
    try:
        a.wait_ready()
        haproxy = [p for p in a.session() if _name(p) == "haproxy"]
        assert haproxy, "HAProxy is not in the service's session"
        inflight = InFlight(a)
        inflight.start()
        time.sleep(1.0)  # the slow upload is under way, the large images are being decoded
        signalled_at = time.monotonic()
        a.signal_group(signal.SIGINT)
        inflight.signalled.set()
        took, code = a.wait_stopped(STOP_BOUND_S + 10)
        inflight.join(30)
        print(f"stopped {took:.1f} s after Ctrl-C; in flight: {inflight.results}")
        assert {name: r[2] for name, r in inflight.results.items()} == dict.fromkeys(inflight.results, "ok")
        assert len(inflight.results) == 5
        outlasted = [name for name, r in inflight.results.items() if r[1] > signalled_at]
        assert "http slow upload" in outlasted and "grpc stream" in outlasted, inflight.results
        assert code == 0, a.output[-2000:]
        assert took < STOP_BOUND_S
        assert_gone(a)
        assert "segserve stopped in" in a.output and "no process left, ports free" in a.output

        b = ServeProcess(**ports, extra_args=ARGS, echo=True)
        services.append(b)
        b.wait_ready()
        served(b)
        b.signal_group(signal.SIGKILL)  # the supervisor dies; its service process drains and stops
        killed_at = time.monotonic()

        held = b.ports_in_use()  # B's metrics agent holds its port until B's Ray has stopped
        c = ServeProcess(**ports, extra_args=ARGS, echo=True)
        services.append(c)
        c.wait_ready()
        served(c)
        if held:
            assert "earlier segserve session that is stopping" in c.output, c.output[-2000:]
        b.wait_stopped(STOP_BOUND_S)
        assert b.session() == [], f"the killed supervisor's session is still there: {b.session()}"
        print(f"session B ended {time.monotonic() - killed_at:.1f} s after its supervisor was killed")

        c.signal_group(signal.SIGINT)
        time.sleep(0.5)
        c.signal_group(signal.SIGINT)
        took, code = c.wait_stopped(30)
        print(f"double Ctrl-C: stopped in {took:.1f} s")
        assert code == 130, c.output[-2000:]
        assert took < 15
        assert_gone(c)
    finally:
        for service in services:
            if service.proc.poll() is None or service.session():
                service.kill()


def _name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return ""
