"""One error root for the whole service, carrying its HTTP status.

Errors cross Ray actor boundaries (codec -> ingress), so every class keeps all its constructor
arguments in ``args`` and survives a pickle round trip. The transports map the status to their own
codes in one table each (``service.api.errors``).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: ``code`` is a stable machine-readable name, ``http_status`` the HTTP status."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keeps subclasses with extra fields picklable
        return (self.__class__, self.args)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


class InvalidImage(ServiceError):
    """The body is not a decodable image (empty, truncated, not an image)."""

    code = "invalid_image"
    http_status = 400


class InvalidArgument(ServiceError):
    """An option or field is unknown or malformed."""

    code = "invalid_argument"
    http_status = 400


class UnsupportedMediaType(ServiceError):
    """The image format (or declared content type) is not one we decode."""

    code = "unsupported_media_type"
    http_status = 415


class PayloadTooLarge(ServiceError):
    """The body or the decoded image is above the configured limits."""

    code = "payload_too_large"
    http_status = 413


class ModelNotFound(ServiceError):
    code = "model_not_found"
    http_status = 404

    def __init__(self, model: str, known: list[str] | tuple[str, ...] = ()) -> None:
        hint = f"; known models: {', '.join(known)}" if known else ""
        super().__init__(f"unknown model {model!r}{hint}")
        self.args = (model, tuple(known))
        self.model = model


class ModelVersionNotFound(ModelNotFound):
    """The model is served, but not in the version asked for (the Open Inference Protocol's URLs and
    fields name versions)."""

    def __init__(self, model: str, version: str, served: str) -> None:
        ServiceError.__init__(
            self, f"model {model!r} has no version {version!r}; it serves version {served!r}"
        )
        self.args = (model, version, served)
        self.model = model


class Unauthenticated(ServiceError):
    code = "unauthenticated"
    http_status = 401


class Overloaded(ServiceError):
    """Queues are full: try again later (``Retry-After``)."""

    code = "overloaded"
    http_status = 503


class Unavailable(ServiceError):
    """Not ready, draining, or a replica died mid-request: safe to retry."""

    code = "unavailable"
    http_status = 503


class DeadlineExceeded(ServiceError):
    code = "deadline_exceeded"
    http_status = 504


class ModelFailure(ServiceError):
    """The model itself failed on a valid input: a server fault, reported as 500."""

    code = "internal"
    http_status = 500
