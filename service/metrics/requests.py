"""Request accounting at the ingress: requests by model, protocol and status, the in-flight gauge, the
end-to-end time and the answer's size; ``RequestCall`` follows one request from arrival to answer."""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection
from typing import Any

from service.metrics.catalogue import (
    IN_FLIGHT,
    PROTOCOLS,
    REQUEST_DURATION,
    REQUESTS,
    RESPONSE_BYTES,
    RESPONSE_SIZE,
    UNKNOWN_MODEL,
)
from service.metrics.sinks import Sink, _record

HTTP_PROTOCOLS = frozenset({"http", "oip_http"})
"""The ``protocol`` labels whose status is an HTTP code (the others' is a gRPC status name)."""

# --- label helpers ------------------------------------------------------------------------------


def model_label(name: str | None, served: Collection[str] | None) -> str:
    """The model's name when it is served, else one fixed label (names in URLs are unbounded).
    ``served=None`` (nothing to check against) keeps any non-empty name."""
    return name if name and (served is None or name in served) else UNKNOWN_MODEL


def outcome_of(http_status: int) -> str:
    if http_status < 400:
        return "success"
    if http_status < 500 or http_status == 499:
        return "client_error"
    return "server_error"


# --- ingress: requests --------------------------------------------------------------------------


def record_request(
    model: str,
    protocol: str,
    status: str,
    code: str,
    outcome: str,
    seconds: float,
    *,
    response_bytes: int | None = None,
    mask_format: str = "",
    sink: Sink | None = None,
) -> None:
    """Count one answered request and observe its duration (and its size when it succeeded)."""
    _record(
        REQUESTS,
        1,
        {"model": model, "protocol": protocol, "status": status, "code": code, "outcome": outcome},
        sink,
    )
    _record(REQUEST_DURATION, seconds, {"model": model, "protocol": protocol, "outcome": outcome}, sink)
    if response_bytes is not None and outcome == "success":
        tags = {"model": model, "protocol": protocol, "format": mask_format or "none"}
        _record(RESPONSE_BYTES, response_bytes, tags, sink)
        _record(RESPONSE_SIZE, response_bytes, tags, sink)


_in_flight: Tally = Tally()
_in_flight_lock = threading.Lock()


def _track_in_flight(model: str, protocol: str, delta: int, sink: Sink | None) -> None:
    with _in_flight_lock:
        _in_flight[(model, protocol)] += delta
        value = _in_flight[(model, protocol)]
    _record(IN_FLIGHT, value, {"model": model, "protocol": protocol}, sink)


def refresh_in_flight(served: Collection[str], sink: Sink | None = None) -> None:
    """Set every in-flight gauge again, zeros included (for every served model and protocol).

    Ray 2.60 drops a gauge series that was not set for about two report intervals (20 s), so an idle
    ingress would lose its in-flight series; the Ingress's health check (every 10 s) calls this.
    """
    with _in_flight_lock:
        for model in served:
            for protocol in PROTOCOLS:
                _in_flight.setdefault((model, protocol), 0)
        current = list(_in_flight.items())
    for (model, protocol), value in current:
        _record(IN_FLIGHT, value, {"model": model, "protocol": protocol}, sink)


class RequestCall:
    """One segmentation request at the ingress: in flight from creation to ``finish``.

    Use it as a context manager: leaving the block without ``finish`` (the request was cancelled)
    counts the request as cancelled (status 499 / CANCELLED), and the in-flight gauge always goes
    back down.
    """

    def __init__(
        self,
        protocol: str,
        model: str,
        request_id: str = "",
        sink: Sink | None = None,
        on_finish: Callable[..., None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.model = model
        self.request_id = request_id
        self.sink = sink
        self.on_finish = on_finish
        self.started = time.perf_counter()
        self.finished = False
        _track_in_flight(model, protocol, +1, sink)

    def __enter__(self) -> RequestCall:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if not self.finished:
                cancelled = "499" if self.protocol in HTTP_PROTOCOLS else "CANCELLED"
                self.finish(status=cancelled, http_status=499, code="cancelled")
        finally:
            _track_in_flight(self.model, self.protocol, -1, self.sink)

    def succeeded(
        self,
        status: str,
        result: Any,
        response_bytes: int | None,
        request_id: str = "",
        request_bytes: int | None = None,
    ) -> None:
        self.finish(
            status=status,
            http_status=200,
            request_id=request_id,
            result=result,
            response_bytes=response_bytes,
            request_bytes=request_bytes,
        )

    def failed(self, status: str, error: Any, request_id: str = "") -> None:
        """Finish with a ``ServiceError`` (its ``code`` and ``http_status``)."""
        self.finish(status=status, http_status=error.http_status, code=error.code, request_id=request_id)

    def finish(
        self,
        *,
        status: str,
        http_status: int,
        code: str | None = None,
        request_id: str = "",
        result: Any = None,
        response_bytes: int | None = None,
        request_bytes: int | None = None,
    ) -> None:
        """Record the request (once) and hand its fields to ``on_finish`` (the access log)."""
        if self.finished:
            return
        self.finished = True
        seconds = time.perf_counter() - self.started
        outcome = outcome_of(http_status)
        code = code or ("ok" if http_status < 400 else f"http_{http_status}")
        mask_format = getattr(result, "mask_format", "") if result is not None else ""
        record_request(
            self.model,
            self.protocol,
            status,
            code,
            outcome,
            seconds,
            response_bytes=response_bytes,
            mask_format=mask_format,
            sink=self.sink,
        )
        if self.on_finish is not None:
            self.on_finish(
                model=self.model,
                protocol=self.protocol,
                status=status,
                code=code,
                outcome=outcome,
                request_id=request_id or self.request_id,
                duration_ms=seconds * 1000,
                result=result,
                response_bytes=response_bytes,
                request_bytes=request_bytes,
            )


def request_call(
    protocol: str,
    model: str | None,
    served: Collection[str] | None,
    request_id: str = "",
    sink: Sink | None = None,
    on_finish: Callable[..., None] | None = None,
) -> RequestCall:
    return RequestCall(protocol, model_label(model, served), request_id, sink, on_finish)
