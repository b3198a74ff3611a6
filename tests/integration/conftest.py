"""One real Ray + Ray Serve for the whole integration session (HTTP and gRPC on free ports)."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from service.local import free_port

pytestmark = pytest.mark.integration


class Service:
    def __init__(self, http_port: int, grpc_port: int, metrics_port: int) -> None:
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def http(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def grpc_stub(self):
        import grpc

        from service.generated.segmentation.v1 import segmentation_pb2_grpc

        size = 256 * 1024 * 1024  # 20-megapixel images and their masks exceed gRPC's 4 MiB default
        options = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        channel = grpc.insecure_channel(self.grpc_target, options=options)
        return segmentation_pb2_grpc.SegmentationStub(channel)


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            if r.status_code == 200:
                return
            last = r.text
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout_s}s: {last}")


@pytest.fixture(scope="session")
def service():
    """Ray with logical CPUs (replicas set their own torch threads) and a small object store."""
    import ray
    from ray import serve

    from service.local import deploy, start_local
    from tests.integration.apps import API_KEYS_ENV, ENV_API_KEYS

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ[API_KEYS_ENV] = ",".join(ENV_API_KEYS)  # inherited by the Ray workers started below
    svc = Service(free_port(), free_port(), free_port())
    start_local(
        port=svc.http_port,
        grpc_port=svc.grpc_port,
        metrics_port=svc.metrics_port,
        num_cpus=8,
        object_store_mb=200,
    )
    deploy()
    wait_ready(svc.url)
    yield svc
    serve.shutdown()
    ray.shutdown()
