"""Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on the service's gRPC port.

Each RPC is a ``Method`` of ``METHODS``, run by the same wrapper as ``segmentation.v1``'s
(``service.api.grpc.unary``: auth, accounting, request ids, errors as status codes). The Ingress
exposes one Python method per RPC name; none collides with ``segmentation.v1``'s (Ray Serve routes a
gRPC call by its method name only). ``ModelInfer`` is counted under protocol ``oip_grpc``; its
deadline is ``x-timeout-ms`` metadata or the request's ``timeout`` parameter (microseconds).
"""

from __future__ import annotations

from typing import Any

from service.api.grpc import Call, Method, timeout_from_metadata
from service.api.oip import convert
from service.api.oip import infer as oip_infer
from service.api.oip import model as oip_model
from service.errors import Unavailable
from service.generated.inference import grpc_predict_v2_pb2 as pb


async def _server_live(request: Any, call: Call) -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


async def _server_ready(request: Any, call: Call) -> pb.ServerReadyResponse:
    try:
        await call.core.ready()
    except Unavailable:
        return pb.ServerReadyResponse(ready=False)
    return pb.ServerReadyResponse(ready=True)


async def _model_ready(request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
    oip_model.check_version(call.core.spec(request.name), request.version)  # NOT_FOUND when not served
    try:
        answers = (await call.core.ready())["models"]
    except Unavailable:
        return pb.ModelReadyResponse(ready=False)
    return pb.ModelReadyResponse(ready=any(a.get("model") == request.name for a in answers))


async def _server_metadata(request: Any, call: Call) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(**oip_model.server_metadata())


async def _model_metadata(request: pb.ModelMetadataRequest, call: Call) -> pb.ModelMetadataResponse:
    spec = oip_model.check_version(call.core.spec(request.name), request.version)
    return convert.metadata_to_pb(oip_model.model_metadata(spec, call.core.get_model(request.name)))


async def _model_config(request: pb.ModelConfigRequest, call: Call) -> pb.ModelConfigResponse:
    spec = oip_model.check_version(call.core.spec(request.name), request.version)
    return convert.config_to_pb(oip_model.model_config(spec, call.core.get_model(request.name)))


async def _model_infer(request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
    core = call.core
    spec = oip_model.check_version(core.spec(request.model_name), request.model_version)
    parsed = convert.request_from_pb(request)
    timeouts = [t for t in (timeout_from_metadata(call.meta), parsed.timeout_s()) if t is not None]
    deadline = core.deadline(min(timeouts) if timeouts else None)
    answer = await oip_infer.infer(core, spec, parsed, call.request_id, deadline, "oip_grpc")
    call.result = answer.results[0]
    return convert.response_to_pb(spec.name, spec.version, parsed, answer)


METHODS: dict[str, Method] = {
    "ServerLive": Method(_server_live, pb.ServerLiveResponse, open=True),
    "ServerReady": Method(_server_ready, pb.ServerReadyResponse, open=True),
    "ModelReady": Method(_model_ready, pb.ModelReadyResponse),
    "ServerMetadata": Method(_server_metadata, pb.ServerMetadataResponse),
    "ModelMetadata": Method(_model_metadata, pb.ModelMetadataResponse),
    "ModelConfig": Method(_model_config, pb.ModelConfigResponse),
    "ModelInfer": Method(
        _model_infer,
        pb.ModelInferResponse,
        accounted=True,
        protocol="oip_grpc",
        model_field="model_name",
        id_field="id",
    ),
}
