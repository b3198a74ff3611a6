"""One place that turns any failure into a ServiceError, and a ServiceError into each protocol's status.

Both transports call ``to_service_error`` and then use the tables below, so an error cannot be
mapped differently over HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError

from service.errors import (
    DeadlineExceeded,
    ModelFailure,
    Overloaded,
    ServiceError,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger("ray.serve")

# Seconds a client is told to wait after an overload answer (HTTP Retry-After).
RETRY_AFTER_S = 1

GRPC_STATUS: dict[str, grpc.StatusCode] = {
    "invalid_image": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    # Too large / unsupported are client mistakes that a retry cannot fix, so they are not
    # RESOURCE_EXHAUSTED (which clients retry): INVALID_ARGUMENT, the message says which.
    "unsupported_media_type": grpc.StatusCode.INVALID_ARGUMENT,
    "payload_too_large": grpc.StatusCode.INVALID_ARGUMENT,
    "model_not_found": grpc.StatusCode.NOT_FOUND,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "internal": grpc.StatusCode.INTERNAL,
}


def _cause(error: BaseException) -> BaseException:
    """Ray wraps a replica's exception in RayTaskError (possibly several times); unwrap it."""
    while isinstance(error, RayTaskError) and error.cause is not None and error.cause is not error:
        error = error.cause
    return error


def _chain(error: BaseException):
    """The error and what caused it: Ray's task-error causes and explicit ``raise ... from`` causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        unwrapped = _cause(current)
        current = unwrapped if unwrapped is not current else current.__cause__


def to_service_error(error: BaseException) -> ServiceError:
    """Classify any exception raised while answering a request."""
    error = _cause(error)
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("the service is at capacity; retry after a short wait")
    # A replica that died mid-request can surface wrapped, e.g. as the RayServeException "upstream actor
    # died before finishing a dependent task" caused by the ActorDiedError: retryable, not a 500. So is
    # an intermediate result lost with its node (ObjectLostError and its OwnerDied/Reconstruction kin).
    unavailable = DeploymentUnavailableError | RayActorError | ObjectLostError
    if any(isinstance(e, unavailable) for e in _chain(error)):
        return Unavailable("a replica is unavailable (restarting or draining); retry")
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return DeadlineExceeded("the request did not finish within its deadline")
    if isinstance(error, RequestCancelledError | asyncio.CancelledError):
        return Unavailable("the request was cancelled")
    logger.exception("unexpected error", exc_info=error)
    return ModelFailure("internal error while segmenting; the request id identifies it in the logs")


def http_headers(error: ServiceError) -> dict[str, str]:
    if isinstance(error, Overloaded | Unavailable):
        return {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(error, Unauthenticated):
        return {"WWW-Authenticate": "Bearer"}  # RFC 9110: a 401 names the scheme it wants
    return {}


def grpc_status(error: ServiceError) -> grpc.StatusCode:
    return GRPC_STATUS.get(error.code, grpc.StatusCode.INTERNAL)
