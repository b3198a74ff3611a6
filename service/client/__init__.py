"""Python client for the segmentation service, over HTTP or gRPC, with the same calls on both.

    from service.client import connect
    with connect("grpc://127.0.0.1:9000") as client:          # or "http://127.0.0.1:8000"
        result = client.segment("street.jpg", model="unet-shapes")
        result.labels            # numpy [H, W] class ids
        result.classes           # [(id, name, pixels), ...]

Names are imported on first use (PEP 562), so ``segserve --help`` does not pay for grpc and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.client.errors import ClientError
    from service.client.grpc import GrpcClient
    from service.client.http import HttpClient
    from service.client.retry import RetryPolicy
    from service.client.types import ClassCount, SegmentationResult

__all__ = [
    "ClassCount",
    "ClientError",
    "GrpcClient",
    "HttpClient",
    "RetryPolicy",
    "SegmentationResult",
    "connect",
]

_LAZY = {
    "ClientError": "service.client.errors",
    "GrpcClient": "service.client.grpc",
    "HttpClient": "service.client.http",
    "RetryPolicy": "service.client.retry",
    "ClassCount": "service.client.types",
    "SegmentationResult": "service.client.types",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def connect(url: str, **kwargs: Any) -> HttpClient | GrpcClient:
    """A client for ``url``: ``grpc://host:port`` (``grpcs://`` for TLS) or ``http(s)://host:port``.

    Keyword arguments go to the client (``api_key``, ``timeout_s``, ``retries``, ...).
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("grpc", "grpcs"):
        from service.client.grpc import GrpcClient

        return GrpcClient(rest.rstrip("/"), secure=scheme == "grpcs", **kwargs)
    if sep and scheme in ("http", "https"):
        from service.client.http import HttpClient

        return HttpClient(url, **kwargs)
    raise ValueError(f"cannot tell the protocol of {url!r}: use grpc://host:port or http(s)://host:port")
