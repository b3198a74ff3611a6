"""The one exception the client raises: ``ClientError``, for HTTP and gRPC alike."""

from __future__ import annotations

# Error codes for answers that carry no JSON error body (a proxy's plain-text 503, a 408 from Ray's
# HTTP proxy timeout); service answers carry their own ``code`` (service/errors.py).
HTTP_STATUS_CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    404: "not_found",
    408: "deadline_exceeded",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    500: "internal",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ClientError(Exception):
    """A request that failed (after retries, where the failure was retryable).

    ``status``: the HTTP status (int) for HTTP, the gRPC status code name (``"NOT_FOUND"``) for gRPC,
    ``0`` when no answer came back at all (connection refused, timed out on the client).
    ``code``: the service's machine-readable code (``model_not_found``, ``overloaded``, ...) when
    the server sent one, else one derived from the status (``not_found``, ``unavailable``,
    ``connection_error``, ``deadline_exceeded``).
    ``message``: the server's text. ``request_id``: the id to quote when asking about it in the logs.
    ``attempts``: how many times the request was tried. ``retryable``: the policy would retry it.
    """

    def __init__(
        self,
        status: int | str,
        code: str,
        message: str,
        request_id: str | None = None,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(status, code, message, request_id)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = attempts

    def __reduce__(self):  # keeps the keyword-only fields through a pickle round trip
        kwargs = {"retryable": self.retryable, "retry_after_s": self.retry_after_s, "attempts": self.attempts}
        return (_rebuild, (self.args, kwargs))

    def __str__(self) -> str:
        text = f"{self.code} ({self.status}): {self.message}"
        if self.attempts > 1:
            text += f" (after {self.attempts} attempts)"
        if self.request_id:
            text += f" [request_id={self.request_id}]"
        return text

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "request_id": self.request_id,
        }


def _rebuild(args: tuple, kwargs: dict) -> ClientError:
    return ClientError(*args, **kwargs)
