"""Protobuf (``inference`` package) <-> the Open Inference Protocol's transport-free types. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from google.protobuf import json_format

from service.api.oip import tensors
from service.api.oip.infer import InferAnswer, InferRequest, InputTensor, RequestedOutput
from service.errors import InvalidArgument
from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import model_config_pb2 as config_pb


def parameters_from_pb(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
        for key, value in params.items()
    }


def parameters_to_pb(params: Mapping[str, Any], out: MutableMapping[str, pb.InferParameter]) -> None:
    for key, value in params.items():
        if isinstance(value, bool):
            out[key].bool_param = value
        elif isinstance(value, int):
            out[key].int64_param = value
        elif isinstance(value, float):
            out[key].double_param = value
        else:
            out[key].string_param = str(value)


def request_from_pb(request: pb.ModelInferRequest) -> InferRequest:
    """Inputs from ``raw_input_contents`` (one entry per input, in order) or from each input's typed
    ``contents``; the protocol allows one of the two per request."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input"
        )
    inputs = []
    for i, item in enumerate(request.inputs):
        datatype = tensors.check_datatype(item.name, item.datatype)
        shape = tensors.check_shape(item.name, list(item.shape))
        if raw:
            values = tensors.from_raw(item.name, raw[i], datatype, shape)
        else:
            values = tensors.from_contents(item.name, _typed(item, datatype), datatype, shape)
        inputs.append(InputTensor(item.name, datatype, shape, values))
    return InferRequest(
        id=request.id,
        parameters=parameters_from_pb(request.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(o.name, parameters_from_pb(o.parameters)) for o in request.outputs],
    )


def _typed(item: pb.ModelInferRequest.InferInputTensor, datatype: str):
    field = tensors.CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {item.name!r}: {datatype} travels in raw_input_contents only")
    return getattr(item.contents, field)


def response_to_pb(
    model: str, version: str, request: InferRequest, answer: InferAnswer
) -> pb.ModelInferResponse:
    """Outputs in ``raw_output_contents`` (as Triton answers), or in typed ``contents`` when the request
    says ``binary_data_output: false``; the protocol allows one of the two per response."""
    raw = request.parameters.get("binary_data_output", True) is not False
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for output in answer.outputs:
        tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            response.raw_output_contents.append(tensors.to_raw(output.values, output.datatype))
        else:
            field = getattr(tensor.contents, tensors.CONTENTS_FIELDS[output.datatype])
            field.extend(tensors.to_contents(output.values, output.datatype))
    return response


def metadata_to_pb(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    response = pb.ModelMetadataResponse(
        name=metadata["name"],
        versions=metadata["versions"],
        platform=metadata["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
    )
    parameters_to_pb(metadata["parameters"], response.parameters)
    return response


def config_to_pb(config: dict[str, Any]) -> pb.ModelConfigResponse:
    """Triton's JSON model configuration -> its protobuf (field names and enum names are the same)."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, config_pb.ModelConfig()))
