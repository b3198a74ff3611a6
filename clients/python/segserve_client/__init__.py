"""Python client for the segmentation service, over HTTP or gRPC, with the same calls on both.

    from segserve_client import connect
    with connect("grpc://127.0.0.1:9000") as client:          # or "http://127.0.0.1:8000"
        result = client.segment("street.jpg", model="unet-shapes")
        result.labels            # numpy [H, W] class ids
        result.classes           # [(id, name, pixels), ...]

Names are imported on first use (PEP 562), so ``segserve-client --help`` does not pay for grpc and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segserve_client.errors import ClientError
    from segserve_client.grpc import GrpcClient
    from segserve_client.http import HttpClient
    from segserve_client.retry import RetryPolicy
    from segserve_client.types import ClassCount, SegmentationResult

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
    "ClientError": "segserve_client.errors",
    "GrpcClient": "segserve_client.grpc",
    "HttpClient": "segserve_client.http",
    "RetryPolicy": "segserve_client.retry",
    "ClassCount": "segserve_client.types",
    "SegmentationResult": "segserve_client.types",
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
        from segserve_client.grpc import GrpcClient

        return GrpcClient(rest.rstrip("/"), secure=scheme == "grpcs", **kwargs)
    if sep and scheme in ("http", "https"):
        from segserve_client.http import HttpClient

        return HttpClient(url, **kwargs)
    raise ValueError(f"cannot tell the protocol of {url!r}: use grpc://host:port or http(s)://host:port")
