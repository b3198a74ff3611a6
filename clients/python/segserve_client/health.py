"""``grpc.health.v1.Health/Check`` without the grpcio-health-checking package.

The two messages are built from a descriptor in a private pool: the standard ``grpc_health``
package (which the service uses) registers the same ``grpc.health.v1`` names in protobuf's default
pool, and both may be loaded in one process.
"""

from __future__ import annotations

from functools import cache

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1
"""``HealthCheckResponse.ServingStatus.SERVING`` (others: UNKNOWN, NOT_SERVING, SERVICE_UNKNOWN)."""


@cache
def _messages() -> tuple[type, type]:
    """The ``HealthCheckRequest`` and ``HealthCheckResponse`` classes of grpc/health/v1/health.proto."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="segserve_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        label=field.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )


def check(channel: grpc.Channel, service: str = "", timeout_s: float | None = None, metadata=None) -> int:
    """The serving status the server reports for ``service`` (``""``: the server as a whole).

    Raises ``grpc.RpcError`` when the call fails.
    """
    request_type, response_type = _messages()
    method = channel.unary_unary(
        CHECK_METHOD,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return method(request_type(service=service), timeout=timeout_s, metadata=metadata).status
