"""Ingress: the application's entry deployment. FastAPI routes and gRPC methods share one core.

Fused topology (CPU nodes, the default there): every ingress replica runs the served models itself
(``service.worker.LocalModels``), so a request is proxy -> this replica, with no hop between
deployments. Split topology (GPU): the core calls the codec and segmenter deployments through handles.
"""

from __future__ import annotations

from ray import serve
from ray.serve.grpc_util import gRPCInputStream

from service import metrics
from service.api import grpc as grpc_api
from service.api.core import SegmentationCore
from service.api.http import SegmentFirst, build_http_app
from service.api.oip import grpc as oip_grpc
from service.api.oip import http as oip_http
from service.config import AppSettings, Repository
from service.cores import CoreShare
from service.deployments.split import SplitModels
from service.models.inference import configure_threads
from service.worker import LocalModels


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(
        self,
        repository: Repository,
        settings: AppSettings,
        names: list[str],
        codec=None,
        segmenters: dict | None = None,
    ) -> None:
        if segmenters is None:  # fused: the models live here
            threads = configure_threads(settings.ingress.threads)
            # Every replica marks itself busy for the others; models with borrow_idle_cores borrow.
            cores = CoreShare.open(threads)
            specs = {n: repository.get(n) for n in names}
            weights = {n: repository.weights_path(s) if s.weights else None for n, s in specs.items()}
            self.local: LocalModels | None = LocalModels.load(specs, weights, settings.limits, cores)
            models = self.local
        else:
            self.local = None
            models = SplitModels(codec, segmenters)
        self.core = SegmentationCore(repository, settings, names, models)

    def check_health(self) -> None:
        metrics.refresh_in_flight(self.core.served)  # Ray drops gauges that are not set for ~20 s
        if self.local is not None:
            self.local.check_health()

    def __serve_build_asgi_app__(self):
        """Called by Ray Serve after __init__: the HTTP app, its routes reaching this core (the segment
        route first, without FastAPI's stack: ``SegmentFirst``)."""
        app = build_http_app()
        app.include_router(oip_http.router)  # the Open Inference Protocol's /v2 routes
        app.state.core = self.core
        return SegmentFirst(app)

    # gRPC: Ray Serve calls the method named like the RPC; each is one line into the wrapper of
    # service/api/grpc.py (auth, accounting, errors). `grpc_context=None` keeps the methods callable
    # through a DeploymentHandle too.
    async def Segment(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "Segment", request, grpc_context)

    async def SegmentStream(self, requests: gRPCInputStream, grpc_context=None):
        async for response in grpc_api.segment_stream(self.core, requests, grpc_context):
            yield response

    async def ListModels(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ListModels", request, grpc_context)

    async def GetModel(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "GetModel", request, grpc_context)

    async def Check(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "Check", request, grpc_context)

    # The Open Inference Protocol (inference.GRPCInferenceService): its RPCs through the same wrapper.
    async def ServerLive(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ServerLive", request, grpc_context, oip_grpc.METHODS)

    async def ServerReady(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ServerReady", request, grpc_context, oip_grpc.METHODS)

    async def ModelReady(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ModelReady", request, grpc_context, oip_grpc.METHODS)

    async def ServerMetadata(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ServerMetadata", request, grpc_context, oip_grpc.METHODS)

    async def ModelMetadata(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ModelMetadata", request, grpc_context, oip_grpc.METHODS)

    async def ModelConfig(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ModelConfig", request, grpc_context, oip_grpc.METHODS)

    async def ModelInfer(self, request, grpc_context=None):
        return await grpc_api.unary(self.core, "ModelInfer", request, grpc_context, oip_grpc.METHODS)
