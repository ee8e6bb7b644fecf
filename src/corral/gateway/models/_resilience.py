"""Retries with full jitter and a circuit breaker per deployment, for model calls.

* **Retries** (:func:`call_with_retries`): only errors a provider marks ``retryable`` (HTTP
  429 and 5xx, timeouts, connection errors) are retried, by ``tenacity`` with exponential
  backoff and full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015),
  waiting at least the provider's ``Retry-After``. A ``Retry-After`` longer than
  ``max_retry_after_seconds`` is not waited for: the gateway falls back instead.
* **Circuit breakers** (:class:`DeploymentBreakers`): one per deployment upstream; ``closed``
  -> ``open`` after N consecutive failures (the deployment is skipped) -> ``half_open`` after a
  cool-down, when one trial call goes through: success closes the breaker, failure opens it
  again (Nygard, *Release It!*, 2nd ed., ch. 5). Breaker state is per process (not shared in
  Redis).

The tool gateway has its own breakers (``gateway.tools``); the two domains do not import each
other, and a model breaker counts different failures (429 is an answer, not a failure).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from corral.errors import ModelAPIError

__all__ = [
    "BreakerState",
    "DeploymentBreakers",
    "RetryPolicy",
    "call_with_retries",
    "counts_as_failure",
    "retry_after_seconds",
]

T = TypeVar("T")

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False


class DeploymentBreakers:
    """One circuit breaker per deployment upstream, in this process.

    Args:
        failure_threshold: Consecutive failures that open a breaker.
        reset_seconds: Seconds an open breaker skips its deployment before a trial call.
        clock: Monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(failure_threshold, 1)
        self.reset_seconds = reset_seconds
        self.clock = clock
        self._breakers: dict[str, _Breaker] = {}

    def state(self, key: str) -> BreakerState:
        """``closed``, ``open`` (skipped) or ``half_open`` (a trial call may go)."""
        breaker = self._breakers.get(key)
        if breaker is None or breaker.opened_at is None:
            return "closed"
        if self.clock() - breaker.opened_at < self.reset_seconds or breaker.trial_in_flight:
            return "open"
        return "half_open"

    def acquire(self, key: str) -> bool:
        """Whether a call may go to ``key`` now; a half-open breaker lets one trial through."""
        state = self.state(key)
        if state == "closed":
            return True
        if state == "open":
            return False
        self._breakers[key].trial_in_flight = True
        return True

    def release(self, key: str) -> None:
        """A call let through ended without an answer or a failure (cancelled)."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            breaker.trial_in_flight = False

    def record_success(self, key: str) -> None:
        """The deployment answered: close its breaker."""
        self._breakers.pop(key, None)

    def record_failure(self, key: str) -> None:
        """The deployment failed: count it; open at the threshold, or again after a trial."""
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.failures += 1
        if breaker.trial_in_flight or breaker.failures >= self.failure_threshold:
            breaker.opened_at = self.clock()
            breaker.trial_in_flight = False

    def states(self) -> dict[str, BreakerState]:
        """The state of every breaker that has seen a failure, by key (for metrics, readiness)."""
        return {key: self.state(key) for key in list(self._breakers)}

    def failures(self, key: str) -> int:
        """Consecutive failures counted for ``key``."""
        breaker = self._breakers.get(key)
        return 0 if breaker is None else breaker.failures


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

    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait,
        retry=retry_if_exception(retryable),
        sleep=sleep,
        reraise=True,
    )
    return await retrying(attempt)
