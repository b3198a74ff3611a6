"""Peer: LitServe, its own batching and worker processes.

LitServe's HTTP server (uvicorn, ``num_api_servers`` processes) hands each request's bytes to its
inference workers (``workers_per_device`` processes = the model's replicas, each on the replicas'
torch threads). A worker decodes (``decode_request``), runs a batch (``predict``: up to the model's
``max_batch_size``, collected for at most ``BATCH_TIMEOUT_S``) and encodes (``encode_response``).
"""

# No "from __future__ import annotations": LitServe reads decode_request's annotation as an object.

import signal
from typing import Annotated

import litserve as ls
from fastapi import Body
from fastapi.responses import Response

from loadtests.peers.pipeline import PeerPipeline, peer_parser
from service.config import load_repository
from service.types import PreparedImage, Segmentation

# LitServe collects a batch for up to this long. Ours waits 0 s, but LitServe's 0 means polling its
# queue without blocking; 1 ms is the shortest wait of its blocking loop (it polls in 1 ms steps).
BATCH_TIMEOUT_S = 0.001


class SegmentAPI(ls.LitAPI):
    def __init__(self, repository: str, model: str, max_batch_size: int, batch_timeout_s: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout_s,
            api_path=f"/v1/models/{model}/segment",
        )
        self.repository = repository
        self.model_name = model

    def setup(self, device) -> None:
        self.pipeline = PeerPipeline(self.repository, self.model_name)

    # The annotation makes LitServe's FastAPI route read the raw body as bytes (picklable, so it
    # crosses LitServe's queue to the worker as it is).
    def decode_request(self, request: Annotated[bytes, Body(media_type="image/*")]) -> PreparedImage:
        return self.pipeline.prepare(request)

    def predict(self, x: list[PreparedImage]) -> list[Segmentation]:
        return self.pipeline.run(x)

    def encode_response(self, output: Segmentation) -> Response:
        return Response(self.pipeline.encode(output), media_type="image/png")


def main(argv: list[str] | None = None) -> None:
    parser = peer_parser(__doc__ or "")
    parser.add_argument("--batch-timeout-s", type=float, default=BATCH_TIMEOUT_S)
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queues")
    args = parser.parse_args(argv)
    spec = load_repository(args.repository).get(args.model)
    if spec is None:
        raise SystemExit(f"model {args.model!r} is not in {args.repository}")
    api = SegmentAPI(str(args.repository), args.model, spec.batching.max_batch_size, args.batch_timeout_s)
    workers = spec.deployment.num_replicas
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=workers, timeout=60, fast_queue=args.fast_queue
    )
    # SIGTERM (the bench stopping the peer) ends LitServe the way Ctrl-C does: it stops its processes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
