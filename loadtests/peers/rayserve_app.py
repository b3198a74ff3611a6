"""Peer: a minimal Ray Serve app: Serve's HTTP proxy -> a FastAPI ingress -> a ``@serve.batch`` model.

The model deployment has the model's replicas (each on the replicas' torch threads) and batching
(``max_batch_size``, ``batch_wait_timeout_s``); it decodes, batches the forward and encodes, like
our fused topology. Both deployments take ``max_ongoing_requests=32`` (Ray's default of 5 stalls
under load). Ray runs on a local cluster of its own, shut down on SIGTERM.
"""

# No "from __future__ import annotations": FastAPI must see the route annotations as objects.

import asyncio
import os
import signal
import threading

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve

from loadtests.peers.pipeline import PeerPipeline, parse_peer_args
from service.config import ModelSpec, load_repository
from service.types import PreparedImage, Segmentation

MAX_ONGOING_REQUESTS = 32
http_app = FastAPI()


@serve.deployment(name="PeerModel", max_ongoing_requests=MAX_ONGOING_REQUESTS)
class PeerModel:
    def __init__(self, repository: str, model: str, max_batch_size: int, wait_s: float) -> None:
        self.pipeline = PeerPipeline(repository, model)
        self.forward.set_max_batch_size(max_batch_size)
        self.forward.set_batch_wait_timeout_s(wait_s)

    @serve.batch
    async def forward(self, items: list[PreparedImage]) -> list[Segmentation]:
        return await asyncio.to_thread(self.pipeline.run, items)

    async def __call__(self, body: bytes) -> bytes:
        prepared = await asyncio.to_thread(self.pipeline.prepare, body)
        return await asyncio.to_thread(self.pipeline.encode, await self.forward(prepared))


@serve.deployment(name="PeerIngress", max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress(http_app)
class PeerIngress:
    def __init__(self, model) -> None:
        self.model = model

    @http_app.get("/health")
    async def health(self) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @http_app.post("/v1/models/{model}/segment")
    async def segment(self, model: str, request: Request) -> Response:
        return Response(await self.model.remote(await request.body()), media_type="image/png")


def build(repository: str, spec: ModelSpec):
    d, b = spec.deployment, spec.batching
    model = PeerModel.options(num_replicas=d.num_replicas, ray_actor_options={"num_cpus": d.num_cpus})
    bound = model.bind(repository, spec.name, b.max_batch_size, b.batch_wait_timeout_s)
    return PeerIngress.options(ray_actor_options={"num_cpus": 0.25}).bind(bound)


def main(argv: list[str] | None = None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster, as the bench's own

    args = parse_peer_args(__doc__ or "", argv)
    spec = load_repository(args.repository).get(args.model)
    if spec is None:
        raise SystemExit(f"model {args.model!r} is not in {args.repository}")
    root = os.getcwd()
    ray.init(
        num_cpus=max(8, os.cpu_count() or 2),  # scheduling tokens, as for ours (service.local)
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": root}},
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build(str(args.repository), spec), name="peer", route_prefix="/")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
