"""Ingress: the application's entry deployment. FastAPI routes and gRPC methods share one core."""

from __future__ import annotations

from ray import serve
from ray.serve.grpc_util import gRPCInputStream

from service import metrics
from service.api import grpc as grpc_api
from service.api.core import SegmentationCore
from service.api.http import build_http_app
from service.config import AppSettings, Repository


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, repository: Repository, settings: AppSettings, codec, segmenters: dict) -> None:
        self.core = SegmentationCore(repository, settings, codec, segmenters)

    def check_health(self) -> None:
        metrics.refresh_in_flight(self.core.segmenters)  # Ray drops gauges that are not set for ~20 s

    def __serve_build_asgi_app__(self):
        """Called by Ray Serve after __init__: the FastAPI app, its routes reaching this core."""
        app = build_http_app()
        app.state.core = self.core
        return app

    # gRPC: Ray's proxy calls the method named like the RPC. `grpc_context=None` keeps the methods
    # callable through a DeploymentHandle too.
    async def Segment(self, request, grpc_context=None):
        return await grpc_api.segment(self.core, request, grpc_context)

    async def SegmentStream(self, requests: gRPCInputStream, grpc_context=None):
        async for response in grpc_api.segment_stream(self.core, requests, grpc_context):
            yield response

    async def ListModels(self, request, grpc_context=None):
        return grpc_api.list_models(self.core, grpc_context)

    async def GetModel(self, request, grpc_context=None):
        return grpc_api.get_model(self.core, request, grpc_context)

    async def Check(self, request, grpc_context=None):
        """grpc.health.v1.Health/Check, for Kubernetes gRPC probes: SERVING once every model is ready."""
        try:
            await self.core.ready()
        except Exception:
            return grpc_api.health_check(ready=False)
        return grpc_api.health_check(ready=True)
