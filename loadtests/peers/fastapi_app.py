"""Peer: plain FastAPI + uvicorn, one process, a sync endpoint in FastAPI's thread pool, no batching.

Each request runs the whole ``PeerPipeline.segment`` in a pool thread; concurrent requests overlap
in the model (torch releases the GIL), each forward on the replicas' torch threads.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI, Header
from fastapi.responses import PlainTextResponse, Response

from loadtests.peers.pipeline import PeerPipeline, parse_peer_args


def build_app(pipeline: PeerPipeline) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    # A sync endpoint: FastAPI reads the body, then runs this in its thread pool.
    @app.post("/v1/models/{model}/segment")
    def segment(
        model: str,
        body: Annotated[bytes, Body(media_type="image/*")],
        content_type: Annotated[str | None, Header()] = None,
    ) -> Response:
        return Response(pipeline.segment(body, content_type), media_type="image/png")

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_peer_args(__doc__ or "", argv)
    app = build_app(PeerPipeline(args.repository, args.model))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
