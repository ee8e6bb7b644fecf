"""Retries with full jitter and a circuit breaker per deployment, for model calls.

* **Retries** (:func:`call_with_retries`): only errors a provider marks ``retryable`` (HTTP
  429 and 5xx, timeouts, connection errors) are retried, by ``tenacity`` with exponential
  backoff and full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015),
  waiting at least the provider's ``Retry-After``. A ``Retry-After`` longer than
  ``max_retry_after_seconds`` is not waited for: the gateway falls back instead.
* **Circuit breakers**: :class:`corral.resilience.CircuitBreakers`, one per deployment
  upstream, shared with the tool gateway's implementation (per process, or in Redis when
  ``CORRAL_MODELS__BREAKER_STORAGE_URL`` is set). A model breaker counts its own failures
  (:func:`counts_as_failure`: a 429 is an answer, not a failure).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from corral.errors import ModelAPIError

__all__ = [
    "RetryPolicy",
    "call_with_retries",
    "counts_as_failure",
    "retry_after_seconds",
]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How retryable model errors are retried.

    Attributes:
        initial_seconds: Upper bound of the first backoff; doubles per retry.
        max_seconds: Upper bound of any backoff.
        max_retry_after_seconds: A longer ``Retry-After`` is not waited for (fall back).
    """

    initial_seconds: float = 0.5
    max_seconds: float = 10.0
    max_retry_after_seconds: float = 30.0


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110).

    Args:
        value: The header's value, or ``None``.
        now: The current time (for an HTTP-date); ``None``: the system clock.

    Returns:
        Seconds to wait (``>= 0``), or ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def counts_as_failure(error: ModelAPIError) -> bool:
    """Whether an error counts against a deployment's breaker.

    Retryable errors other than 429 do (5xx, timeouts, connection errors): the deployment is
    unhealthy. A 429 is the deployment answering "slow down"; a 4xx is the request's fault.
    """
    return error.retryable and error.status_code != 429


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    policy: RetryPolicy,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[None]],
) -> T:
    """Run ``attempt``, retrying the retryable :class:`ModelAPIError` it raises.

    Args:
        attempt: One try of the call.
        retries: Retries after the first attempt.
        policy: Backoff bounds.
        rng: Source of the jitter.
        sleep: Waits between attempts (tests pass one that records and returns).

    Returns:
        What the first successful attempt returned.

    Raises:
        ModelAPIError: the last attempt's error, when it is not retryable, its
            ``Retry-After`` is longer than the policy allows, or the retries ran out.
    """

    def wait(state: RetryCallState) -> float:
        bound = min(policy.max_seconds, policy.initial_seconds * 2 ** (state.attempt_number - 1))
        seconds = rng.uniform(0, bound)
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, ModelAPIError) and error.retry_after_seconds is not None:
            seconds = max(seconds, error.retry_after_seconds)
        return seconds

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, ModelAPIError) or not exc.retryable:
            return False
        after = exc.retry_after_seconds
        return after is None or after <= policy.max_retry_after_seconds

    # The first attempt runs directly: ``tenacity`` (an ``AsyncRetrying``, its retry state and
    # an ``inspect`` check per call) is entered only when it fails with an error to retry. Its
    # loop then starts by "replaying" that first failure (``attempt_number`` 1, same jitter
    # draws), so the retries, waits and the error raised are the same as a loop from the start.
    try:
        return await attempt()
    except ModelAPIError as error:
        if retries < 1 or not retryable(error):
            raise
        first: ModelAPIError | None = error

    async def replay_then_attempt() -> T:
        nonlocal first
        if first is not None:
            failed, first = first, None
            raise failed
        return await attempt()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait,
        retry=retry_if_exception(retryable),
        sleep=sleep,
        reraise=True,
    )
    return await retrying(replay_then_attempt)
