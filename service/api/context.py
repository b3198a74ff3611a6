"""The request's identity in Ray Serve's request context, and its access-log line.

Everything here that reads or writes Ray Serve's request context (a private API: without it only the
log correlation is lost) is in this one module.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

logger = logging.getLogger("ray.serve")


def new_request_id(given: str | None = None) -> str:
    """The caller's id when it is sane (printable, <= 128 chars), else a fresh one."""
    if given and len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def grpc_ray_request_id(context: Any) -> str | None:
    """Ray's own id for a gRPC call (also in its trailing metadata), so logs of both agree."""
    try:
        return context.request_id() if context is not None else None
    except Exception:  # older contexts or handle calls without a proxy
        return None


def bind_request_id(request_id: str) -> None:
    """Make ``request_id`` the id of Ray Serve's request context for the rest of this task.

    Ray Serve adds the context's id to every log line (``request_id`` in the JSON logs) and passes it
    with every handle call, so the codec's and the segmenter's log lines carry it too. Ray's proxies
    take the id from ``x-request-id`` (HTTP) or ``request_id`` metadata (gRPC) only; the service
    also accepts gRPC ``x-request-id`` metadata and the ``request_id`` field, so it sets it here.
    """
    if not request_id:
        return
    try:
        from ray.serve import context

        current = context._get_serve_request_context()
        if current.request_id != request_id:
            context._serve_request_context.set(dataclasses.replace(current, request_id=request_id))
    except Exception:  # a private API: without it only the log correlation is lost
        logger.debug("could not bind the request id to Ray Serve's request context", exc_info=True)


def current_request_id() -> str:
    try:
        from ray.serve import context

        return context._get_serve_request_context().request_id or ""
    except Exception:
        return ""


def access_log(
    *,
    model: str,
    protocol: str,
    status: str,
    code: str,
    outcome: str,
    request_id: str,
    duration_ms: float,
    result: Any = None,
    response_bytes: int | None = None,
    request_bytes: int | None = None,
) -> None:
    """One line per segmentation request at the ingress; with ``logging_config: {encoding: JSON}``
    every ``extra`` field below is a key of the JSON line."""
    fields: dict[str, Any] = {
        "model": model,
        "protocol": protocol,
        "status": status,
        "code": code,
        "outcome": outcome,
        "request_id": request_id or current_request_id(),
        "duration_ms": round(duration_ms, 3),
    }
    if result is not None:
        fields["timings_ms"] = {k: round(float(v), 3) for k, v in result.timings_ms.items()}
        fields["batch_size"] = int(result.batch_size)
        fields["format"] = result.mask_format
    if response_bytes is not None:
        fields["response_bytes"] = int(response_bytes)
    if request_bytes is not None:
        fields["request_bytes"] = int(request_bytes)
    logger.info("segment %s %s %s %s %.1fms", protocol, model, status, code, duration_ms, extra=fields)
