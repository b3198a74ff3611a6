"""Peer serving stacks for the benchmark's peers phase: the same model and per-request work as ours
(``PeerPipeline``), served by LitServe, by plain FastAPI + uvicorn and by a minimal Ray Serve app.

Each app is a script the bench starts as a subprocess on a free port (``launch.PeerProcess``):
``python -m loadtests.peers.<app> --repository R --model M --port P``. Every app answers
``POST /v1/models/{model}/segment`` (raw image body) with the label-map PNG, and ``GET /health``.
Nothing here is imported by the service.
"""

# peer name -> module that serves it (run with ``python -m``)
PEER_APPS = {
    "litserve": "loadtests.peers.litserve_app",
    "fastapi": "loadtests.peers.fastapi_app",
    "rayserve": "loadtests.peers.rayserve_app",
}
PEER_LABELS = {"litserve": "LitServe", "fastapi": "plain FastAPI", "rayserve": "minimal Ray Serve"}
