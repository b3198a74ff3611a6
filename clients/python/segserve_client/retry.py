"""Retry policy shared by both clients: exponential backoff with jitter, ``Retry-After`` honoured.

Only overload and unavailability are retried (HTTP 503 / 429 and connection failures; gRPC
UNAVAILABLE / RESOURCE_EXHAUSTED): the request never ran, or the service asked us to come back.
Segmenting is idempotent, so a retry cannot do harm, but a 400 or a 404 will fail again the same way.
All attempts together stay within the call's timeout: no sleep runs past the deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from segserve_client.errors import ClientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    """Retries after the first attempt (``0`` = try once)."""
    backoff_s: float = 0.2
    """First backoff; attempt ``n`` (0-based) waits about ``backoff_s * 2**n``."""
    max_backoff_s: float = 5.0
    """Cap on the exponential part."""
    max_retry_after_s: float = 10.0
    """Cap on a server's ``Retry-After``: a larger value is waited only this long."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError(f"retry settings must be >= 0: {self}")

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based).

        "Equal jitter": a uniform draw in ``[base / 2, base)`` with ``base = min(max_backoff_s,
        backoff_s * 2**attempt)``, so clients that failed together do not come back together. A
        ``Retry-After`` from the server raises the wait to that value, capped by ``max_retry_after_s``.
        """
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay = base * (0.5 + 0.5 * self.rand())
        if retry_after_s is not None and retry_after_s > 0:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay


def call_with_retries(
    attempt: Callable[[float | None], T],
    policy: RetryPolicy,
    timeout_s: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``attempt(remaining_s)`` until it returns, or raises a non-retryable ``ClientError``, or the
    retries or the deadline (``timeout_s`` from now, for all attempts together) run out.

    ``attempt`` gets the seconds left (``None`` = no deadline) and raises ``ClientError`` with
    ``retryable`` (and possibly ``retry_after_s``) set. The error raised carries ``attempts``.
    """
    deadline = None if timeout_s is None else clock() + timeout_s
    tries = 0
    while True:
        remaining = None if deadline is None else max(deadline - clock(), 0.001)
        tries += 1
        try:
            return attempt(remaining)
        except ClientError as error:
            error.attempts = tries
            if not error.retryable or tries > policy.retries:
                raise
            delay = policy.delay_s(tries - 1, error.retry_after_s)
            if deadline is not None and clock() + delay >= deadline:
                raise
            policy.sleep(delay)
