"""Rate limits, retries with jitter and circuit breakers around tool executions.

* **Rate limits** (:class:`ToolRateLimiter`): per tool, per agent (or inbound principal) and
  per tenant, counted with the ``limits`` library's sliding-window counters in this process's
  memory, or in Redis when ``CORRAL_TOOLS__RATE_LIMIT_STORAGE_URL`` is set so that every
  replica shares them. A call that finds a limit exhausted fails with :class:`RateLimited`
  saying when to retry.
* **Retries** (:class:`Resilience.call`): retryable upstream errors (connect errors, timeouts,
  HTTP 429/502/503/504) are retried by ``tenacity`` with exponential backoff and full jitter
  ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015), honouring ``Retry-After``,
  bounded by the attempts and by the tool's timeout. A side-effecting tool that does not
  honour idempotency keys is retried only when its request never reached the upstream.
* **Circuit breakers** (:class:`corral.resilience.CircuitBreakers`, shared with the model
  gateway): one per upstream; after N consecutive failures calls fail fast with
  :class:`CircuitOpen` naming the upstream, until one trial call succeeds. Breaker state is
  per process, or shared in Redis when ``CORRAL_TOOLS__BREAKER_STORAGE_URL`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from corral.errors import CircuitOpen, RateLimited, UpstreamFailed
from corral.gateway.tools._base import ToolCallContext
from corral.resilience import CircuitBreakers
from corral.settings import ToolSettings

if TYPE_CHECKING:
    import limits
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

__all__ = ["Resilience", "ToolRateLimiter", "guard"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Only requests that never reached the upstream are safe to repeat for any tool.
_NOT_SENT = "upstream_unreachable"


@functools.lru_cache(maxsize=256)
def _parse_rate(rate: str) -> tuple[limits.RateLimitItem, ...]:
    import limits  # about 2 MB RSS with its dependencies: imported by the first tool call

    return tuple(limits.parse_many(rate))


def async_storage_url(url: str | None) -> str:
    """The ``limits`` async storage URL for a configured one (``None``: this process's memory)."""
    if not url:
        return "async+memory://"
    return url if url.startswith("async+") else f"async+{url}"


class ToolRateLimiter:
    """Counts tool calls per tool, per agent and per tenant.

    Args:
        settings: Default rates (``rate_limit_per_*``) and the storage URL.

    Raises:
        ValueError: a default rate is not in ``limits`` notation, or the storage URL is not
            one ``limits`` understands (or its client package is missing: Redis needs
            ``coredis``).
    """

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings
        self.storage_url = async_storage_url(settings.rate_limit_storage_url)
        self._storage: Any = None
        self._built: SlidingWindowCounterRateLimiter | None = None
        # The defaults (valid, in memory) are built by the first tool call, so that an idle
        # worker does not import `limits`; configured values are checked now, at start.
        # "Configured" is any `rate_limit_*` setting given explicitly (env, file, argument),
        # so that a rate setting added later is checked without being listed here.
        if any(name.startswith("rate_limit_") for name in settings.model_fields_set):
            self._build()

    def _build(self) -> SlidingWindowCounterRateLimiter:
        if self._built is not None:
            return self._built
        from limits.aio.strategies import SlidingWindowCounterRateLimiter
        from limits.errors import ConfigurationError
        from limits.storage import storage_from_string

        settings = self.settings
        for name, rate in settings:  # every default rate (`rate_limit_per_*`), as in __init__
            if not name.startswith("rate_limit_per_"):
                continue
            try:
                _parse_rate(rate)
            except ValueError:
                raise ValueError(
                    f"tool rate limit {rate!r} is not in limits notation (e.g. '600/minute')"
                ) from None
        try:
            storage = storage_from_string(self.storage_url)
        except ConfigurationError as exc:
            raise ValueError(
                f"cannot use rate-limit storage {settings.rate_limit_storage_url!r}: {exc} "
                "(Redis storage needs the coredis package)"
            ) from exc
        self._storage = storage
        self._built = SlidingWindowCounterRateLimiter(storage)
        return self._built

    def close(self) -> None:
        """Drop the storage's connections (Redis); the next call reconnects."""
        bridge = getattr(self._storage, "bridge", None)
        if bridge is not None:
            # limits has no close(); its coredis client holds a connection pool.
            pool = getattr(bridge.get_connection(), "connection_pool", None)
            if pool is not None:
                pool.disconnect()

    def _checks(
        self, ctx: ToolCallContext, tool_name: str, tool_rate: str | None
    ) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """``(scope, key, rate, storage identifiers)`` of every limit a call counts against."""
        checks = [("tenant", ctx.tenant_id, self.settings.rate_limit_per_tenant)]
        if ctx.principal is not None:
            checks.append(("agent", ctx.principal, self.settings.rate_limit_per_agent))
        checks.append(("tool", tool_name, tool_rate or self.settings.rate_limit_per_tool))
        return [
            (scope, key, rate, ("corral-tools", ctx.tenant_id, scope, key))
            for scope, key, rate in checks
        ]

    async def acquire(
        self, ctx: ToolCallContext, tool_name: str, *, tool_rate: str | None = None
    ) -> None:
        """Count one call against the tenant's, the caller's and the tool's limits.

        Args:
            ctx: The call (tenant and principal key the limits).
            tool_name: The tool called.
            tool_rate: The tool's own rate (``spec.rate_limit``), overriding the default.

        Raises:
            RateLimited: a limit is exhausted; names it and says when to retry. Limits checked
                before it have counted the call. When the storage fails (Redis down) the call
                is let through uncounted and a warning logged: availability over counting.
        """
        limiter = self._build()
        for scope, key, rate, identifiers in self._checks(ctx, tool_name, tool_rate):
            for item in _parse_rate(rate):
                try:
                    allowed = await limiter.hit(item, *identifiers)
                    if allowed:
                        continue
                    stats = await limiter.get_window_stats(item, *identifiers)
                except Exception as exc:  # storage errors differ per backend
                    log.warning("rate-limit storage failed, call not counted: %s", exc)
                    return
                raise _rate_limited(scope, key, rate, stats.reset_time - time.time())

    async def clear(
        self, ctx: ToolCallContext, tool_name: str, *, tool_rate: str | None = None
    ) -> None:
        """Forget the counts :meth:`acquire` would check for this call (tests, operators)."""
        limiter = self._build()
        for _scope, _key, rate, identifiers in self._checks(ctx, tool_name, tool_rate):
            for item in _parse_rate(rate):
                await limiter.clear(item, *identifiers)


def _rate_limited(scope: str, key: str, rate: str, retry_after_seconds: float) -> RateLimited:
    wait = max(retry_after_seconds, 0.0)
    what = {"tenant": "tenant", "agent": "caller", "tool": "tool"}[scope]
    return RateLimited(
        f"rate limit exhausted: {what} {key!r} may make {rate} tool calls; retry in {wait:.1f} s",
        scope=scope,
        limit=rate,
        retry_after_seconds=wait,
    )


async def _admit(breakers: CircuitBreakers, upstream: str) -> None:
    """Let a call through, or refuse it while the upstream's breaker is open.

    Raises:
        CircuitOpen: open and cooling down, or half-open with its trial call in flight.
    """
    admission = await breakers.acquire(upstream)
    if not admission.allowed:
        raise CircuitOpen(
            f"upstream {upstream!r} is unavailable: its circuit breaker opened after "
            f"{admission.failures} consecutive failures; calls fail fast until a trial call "
            f"in {admission.retry_after_seconds:.1f} s succeeds. Try again later or use "
            "another tool.",
            upstream=upstream,
            retry_after_seconds=admission.retry_after_seconds,
        )


@contextlib.asynccontextmanager
async def guard(breakers: CircuitBreakers, upstream: str) -> AsyncIterator[None]:
    """Around one attempt: refuse it when the breaker is open, record how it ended.

    Upstream failures (:class:`UpstreamFailed` other than HTTP 429), timeouts and
    cancellations count as failures; anything else (an answer, even a 4xx) as success.

    Raises:
        CircuitOpen: see :func:`_admit`.
    """
    await _admit(breakers, upstream)
    try:
        yield
    except UpstreamFailed as exc:
        if exc.status_code == 429:
            await breakers.record_success(upstream)
        else:
            await breakers.record_failure(upstream)
        raise
    except (TimeoutError, asyncio.CancelledError):
        await breakers.record_failure(upstream)
        raise
    except BaseException:
        await breakers.record_success(upstream)
        raise
    await breakers.record_success(upstream)


class _BackoffWait:
    """Full-jitter exponential backoff that honours ``Retry-After``."""

    def __init__(self, initial_seconds: float, max_seconds: float) -> None:
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds

    def __call__(self, state: RetryCallState) -> float:
        bound = min(self.max_seconds, self.initial_seconds * 2 ** (state.attempt_number - 1))
        wait = random.uniform(0, bound)  # jitter, not cryptography
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, UpstreamFailed) and error.retry_after_seconds is not None:
            wait = max(wait, error.retry_after_seconds)
        return wait


class _StopAtDeadline(stop_base):
    """Stop retrying when the next attempt would start after the deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= self.deadline


def _retryable(exc: BaseException, *, safe_to_repeat: bool) -> bool:
    if not isinstance(exc, UpstreamFailed) or not exc.retryable:
        return False
    return safe_to_repeat or exc.code == _NOT_SENT


class Resilience:
    """Rate limits, retries and circuit breakers, configured from settings.

    Args:
        settings: Rates, storage, retry and breaker settings.
    """

    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings
        self.rate_limiter = ToolRateLimiter(settings)
        self.breakers = CircuitBreakers(
            settings.breaker_failure_threshold,
            settings.breaker_reset_seconds,
            storage_url=settings.breaker_storage_url,
            namespace="tools",
        )

    def close(self) -> None:
        """Drop rate-limit storage connections."""
        self.rate_limiter.close()

    async def call(
        self,
        upstream: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        retries: int,
        safe_to_repeat: bool,
        timeout_seconds: float,
    ) -> T:
        """Run ``attempt`` through the upstream's breaker, retrying retryable failures.

        Args:
            upstream: Breaker key naming the upstream (``https://api.example.com:443``).
            attempt: One try of the call.
            retries: Retries after the first attempt.
            safe_to_repeat: Whether a request that reached the upstream may be repeated (a
                read-only tool, or one honouring idempotency keys).
            timeout_seconds: No attempt starts later than this many seconds from now.

        Raises:
            CircuitOpen: the breaker is open (nothing was sent).
            UpstreamFailed: the last attempt's error, when it is not retryable or the
                attempts or the time ran out.
            ToolFailed: whatever else ``attempt`` raised (not retried).
        """

        async def guarded() -> T:
            async with guard(self.breakers, upstream):
                return await attempt()

        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries + 1)
            | _StopAtDeadline(time.monotonic() + timeout_seconds),
            wait=_BackoffWait(self.settings.retry_initial_seconds, self.settings.retry_max_seconds),
            retry=retry_if_exception(functools.partial(_retryable, safe_to_repeat=safe_to_repeat)),
            reraise=True,
        )
        return await retrying(guarded)
