"""HTTP client (httpx, synchronous) for ``POST /v1/models/{model}/segment`` and the model routes."""

from __future__ import annotations

import base64
import email.utils
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx

from segserve_client.decode import decode_labels
from segserve_client.errors import HTTP_STATUS_CODES, ClientError
from segserve_client.images import ImageInput, image_bytes
from segserve_client.retry import RetryPolicy, call_with_retries
from segserve_client.types import ClassCount, SegmentationResult

RETRY_STATUSES = frozenset({429, 503})
# Failures where the request cannot have been answered: retried like a 503. A read timeout is not
# among them: the server may still be working on it, and the deadline is spent anyway.
RETRY_TRANSPORT_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


class HttpClient:
    """``HttpClient("http://127.0.0.1:8000").segment("cat.jpg", model="unet-shapes")``.

    ``timeout_s`` bounds each call, retries and backoff included. ``retries`` retries follow a 503 /
    429 (after ``Retry-After``, capped) or a connection failure, with exponential backoff from
    ``backoff_s`` and jitter; every other error is raised at once as ``ClientError``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 30,
        retries: int = 3,
        backoff_s: float = 0.2,
        *,
        retry_policy: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.policy = retry_policy or RetryPolicy(retries=retries, backoff_s=backoff_s)
        headers = {"accept": "application/json", "user-agent": "segserve-client"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    # --- calls -------------------------------------------------------------------------------------

    def segment(
        self,
        image: ImageInput,
        model: str,
        format: str = "png",
        overlay: bool = False,
        request_id: str | None = None,
    ) -> SegmentationResult:
        """Segment one image (bytes, a path, or a uint8 array, which is sent as PNG)."""
        data, content_type = image_bytes(image)
        params = {"format": format}
        if overlay:
            params["overlay"] = "true"
        body = self._request(
            "POST",
            f"/v1/models/{quote(model, safe='')}/segment",
            request_id,
            params=params,
            content=data,
            headers={"content-type": content_type},
        )
        return result_from_json(body)

    def list_models(self) -> list[dict]:
        return self._request("GET", "/v1/models")["models"]

    def get_model(self, name: str) -> dict:
        return self._request("GET", f"/v1/models/{quote(name, safe='')}")

    def ready(self) -> bool:
        """``GET /readyz`` answers 200: every model is loaded and warmed. No retries."""
        try:
            return self._http.get("/readyz", timeout=min(self.timeout_s, 10)).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, request_id: str | None = None, **kwargs: Any) -> Any:
        request_id = request_id or uuid.uuid4().hex  # one id for every attempt
        headers = {"x-request-id": request_id, **kwargs.pop("headers", {})}

        def attempt(remaining_s: float | None) -> Any:
            try:
                response = self._http.request(method, path, headers=headers, timeout=remaining_s, **kwargs)
            except RETRY_TRANSPORT_ERRORS as e:
                raise ClientError(
                    0, "connection_error", f"{type(e).__name__}: {e}", request_id, retryable=True
                ) from e
            except httpx.TimeoutException as e:
                raise ClientError(
                    0, "deadline_exceeded", f"no answer in time ({type(e).__name__})", request_id
                ) from e
            if response.status_code >= 400:
                raise error_from_response(response, request_id)
            try:
                return response.json()
            except ValueError:
                text = response.text[:200]
                raise ClientError(
                    response.status_code, "invalid_response", f"not JSON: {text!r}", request_id
                ) from None

        return call_with_retries(attempt, self.policy, self.timeout_s)


def error_from_response(response: httpx.Response, request_id: str) -> ClientError:
    """An error answer -> ``ClientError``: the service's JSON error body, or the bare status."""
    status = response.status_code
    code, message = HTTP_STATUS_CODES.get(status, f"http_{status}"), response.reason_phrase
    try:
        error = response.json().get("error", {})
        code, message = error.get("code", code), error.get("message", message)
    except (ValueError, AttributeError):
        message = response.text.strip()[:500] or message
    return ClientError(
        status,
        code,
        message,
        response.headers.get("x-request-id", request_id),
        retryable=status in RETRY_STATUSES,
        retry_after_s=retry_after_s(response.headers.get("retry-after")),
    )


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def result_from_json(body: dict[str, Any]) -> SegmentationResult:
    """The JSON body of a segment answer (``service.api.http.result_json``) -> ``SegmentationResult``."""
    mask = body.get("mask", {})
    fmt = mask.get("format", "png")
    data = base64.b64decode(mask["data"]) if "data" in mask else None
    is_raw = "dtype" in mask
    png = data if data is not None and not is_raw else None
    segments = body.get("segments") or []
    height, width = int(body["height"]), int(body["width"])
    labels, panoptic = decode_labels(
        fmt,
        height,
        width,
        segments,
        png=png,
        raw=data if is_raw else None,
        dtype=mask.get("dtype", "uint8"),
        rles=mask.get("rle"),
    )
    overlay = body.get("overlay")
    return SegmentationResult(
        model=body["model"],
        task=body["task"],
        width=width,
        height=height,
        labels=labels,
        classes=[ClassCount(int(c["id"]), c["name"], int(c["pixels"])) for c in body.get("classes", [])],
        panoptic=panoptic,
        segments=segments,
        instances=body.get("instances") or [],
        overlay_png=base64.b64decode(overlay["data"]) if overlay else None,
        timings_ms=dict(body.get("timings_ms", {})),
        batch_size=int(body.get("batch_size", 1)),
        request_id=body.get("request_id", ""),
        format=fmt,
        mask_png=png,
        rle=mask.get("rle"),
        polygons=mask.get("polygons"),
    )
