"""One circuit breaker per key: ``closed`` -> ``open`` -> ``half_open`` -> ``closed``.

``closed``: calls go through and consecutive failures are counted. At ``failure_threshold``
failures the breaker opens: calls are refused for ``reset_seconds``. Then it is ``half_open``:
one trial call goes through (others are still refused); its success closes the breaker, its
failure opens it again (Nygard, *Release It!*, 2nd ed., ch. 5, "Circuit Breaker").

A trial holds its slot for at most ``reset_seconds``: a process that dies during its trial
cannot keep the breaker shut for everyone.

State lives in this process's memory by default, or in Redis (``redis://`` or ``rediss://``
URL; needs ``coredis``) so that replicas share it. In Redis each transition is one Lua script
(atomic on the server) and times are wall-clock seconds, since monotonic clocks differ between
machines; a breaker's key expires once it has been quiet for ten reset periods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from coredis import Redis

__all__ = ["Admission", "BreakerState", "CircuitBreakers"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Admission:
    """Whether a call may go now.

    Attributes:
        allowed: The call may go (closed, or the half-open trial was granted to it).
        failures: Consecutive failures counted for the key.
        retry_after_seconds: When refused, seconds until a trial call may go (a trial in
            flight holds its slot at most ``reset_seconds``).
    """

    allowed: bool
    failures: int = 0
    retry_after_seconds: float = 0.0


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    trial_until: float | None = None


def _state(breaker: _Breaker | None, now: float, reset_seconds: float) -> BreakerState:
    if breaker is None or breaker.opened_at is None:
        return "closed"
    if now - breaker.opened_at < reset_seconds:
        return "open"
    if breaker.trial_until is not None and breaker.trial_until > now:
        return "open"
    return "half_open"


# KEYS[1] breaker hash; ARGV now, reset_seconds. Returns {allowed 0/1, failures, opened_at,
# trial_until}; times as strings (Lua numbers reach the client truncated to integers).
_ACQUIRE = """
local b = redis.call('HMGET', KEYS[1], 'failures', 'opened_at', 'trial_until')
local failures = tonumber(b[1] or '0')
local opened = tonumber(b[2] or '0')
local trial = tonumber(b[3] or '0')
local now = tonumber(ARGV[1])
local reset = tonumber(ARGV[2])
if opened == 0 then return {1, failures, '0', '0'} end
if now - opened < reset or trial > now then return {0, failures, b[2], b[3] or '0'} end
redis.call('HSET', KEYS[1], 'trial_until', tostring(now + reset))
return {1, failures, b[2], tostring(now + reset)}
"""

# KEYS[1]; ARGV now, threshold, ttl_seconds. Returns {failures, opened_at, trial_until}.
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local trial = tonumber(redis.call('HGET', KEYS[1], 'trial_until') or '0')
if trial > 0 or failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[1], 'trial_until', '0')
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {failures, redis.call('HGET', KEYS[1], 'opened_at') or '0', '0'}
"""


class CircuitBreakers:
    """Circuit breakers by key, in this process or shared through Redis.

    Args:
        failure_threshold: Consecutive failures that open a breaker (at least 1).
        reset_seconds: Seconds an open breaker refuses calls before one trial call.
        clock: Seconds; monotonic in memory (default), wall-clock with Redis (default
            ``time.time``). Tests pass their own.
        storage_url: ``None``: this process's memory. ``redis://...``: shared in Redis.
        namespace: Prefix of the Redis keys (``corral:breaker:{namespace}:{key}``).

    Raises:
        ValueError: ``storage_url`` is not a Redis URL, or ``coredis`` is not installed.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        *,
        clock: Callable[[], float] | None = None,
        storage_url: str | None = None,
        namespace: str = "default",
    ) -> None:
        self.failure_threshold = max(failure_threshold, 1)
        self.reset_seconds = reset_seconds
        self.namespace = namespace
        self._redis: Redis[Any] | None = _redis_client(storage_url) if storage_url else None
        default_clock = time.time if self._redis is not None else time.monotonic
        self.clock = clock or default_clock
        self._breakers: dict[str, _Breaker] = {}
        """The breakers: the only state in memory; with Redis, the last state seen."""

    @property
    def shared(self) -> bool:
        """Whether the state is shared through Redis."""
        return self._redis is not None

    def state(self, key: str) -> BreakerState:
        """``closed``, ``open`` (refusing) or ``half_open`` (a trial call may go).

        With Redis this is the state this process last saw; :meth:`acquire` is authoritative.
        """
        return _state(self._breakers.get(key), self.clock(), self.reset_seconds)

    def failures(self, key: str) -> int:
        """Consecutive failures counted for ``key`` (last seen, with Redis)."""
        breaker = self._breakers.get(key)
        return 0 if breaker is None else breaker.failures

    def snapshot(self) -> dict[str, BreakerState]:
        """The state of every key this process has seen fail, by key."""
        now = self.clock()
        return {key: _state(b, now, self.reset_seconds) for key, b in self._breakers.items()}

    async def acquire(self, key: str) -> Admission:
        """Ask to make one call to ``key``; a half-open breaker grants one trial."""
        now = self.clock()
        if self._redis is not None:
            reply = await self._redis.eval(
                _ACQUIRE, keys=[self._key(key)], args=[repr(now), repr(self.reset_seconds)]
            )
            allowed, failures, opened, trial = (_number(value) for value in reply)  # type: ignore[union-attr]
            if opened or failures:
                self._breakers[key] = _Breaker(int(failures), opened or None, trial or None)
            else:
                self._breakers.pop(key, None)
            return self._admission(key, now, allowed=bool(allowed))
        breaker = self._breakers.get(key)
        state = _state(breaker, now, self.reset_seconds)
        if state == "half_open" and breaker is not None:
            breaker.trial_until = now + self.reset_seconds
        return self._admission(key, now, allowed=state != "open")

    async def release(self, key: str) -> None:
        """A call let through ended with neither an answer nor a failure (cancelled)."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            breaker.trial_until = None
        if self._redis is not None:
            await self._redis.hset(self._key(key), {"trial_until": "0"})

    async def record_success(self, key: str) -> None:
        """The upstream answered: close its breaker."""
        self._breakers.pop(key, None)
        if self._redis is not None:
            await self._redis.delete([self._key(key)])

    async def record_failure(self, key: str) -> None:
        """The upstream failed: count it; open at the threshold, or again after a trial."""
        now = self.clock()
        if self._redis is not None:
            ttl = max(math.ceil(self.reset_seconds * 10), 1)
            reply = await self._redis.eval(
                _FAILURE,
                keys=[self._key(key)],
                args=[repr(now), str(self.failure_threshold), str(ttl)],
            )
            failures, opened, _trial = (_number(value) for value in reply)  # type: ignore[union-attr]
            self._breakers[key] = _Breaker(int(failures), opened or None, None)
            return
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.failures += 1
        if breaker.trial_until is not None or breaker.failures >= self.failure_threshold:
            breaker.opened_at = now
            breaker.trial_until = None

    async def clear(self) -> None:
        """Forget every breaker this process has seen (in Redis too): tests, operators."""
        keys: list[str | bytes] = [self._key(key) for key in self._breakers]
        self._breakers.clear()
        if self._redis is not None and keys:
            await self._redis.delete(keys)

    def _admission(self, key: str, now: float, *, allowed: bool) -> Admission:
        breaker = self._breakers.get(key)
        if breaker is None:
            return Admission(allowed)
        remaining = 0.0
        if breaker.opened_at is not None:
            remaining = max(self.reset_seconds - (now - breaker.opened_at), 0.0)
        if breaker.trial_until is not None:
            remaining = max(remaining, breaker.trial_until - now)
        return Admission(allowed, breaker.failures, 0.0 if allowed else remaining)

    def _key(self, key: str) -> str:
        return f"corral:breaker:{self.namespace}:{key}"


def _number(value: object) -> float:
    if isinstance(value, bytes):
        value = value.decode()
    return float(value)  # type: ignore[arg-type]


def _redis_client(url: str) -> Redis[Any]:
    """A ``coredis`` client for ``url`` (``async+`` prefixes from ``limits`` URLs accepted)."""
    url = url.removeprefix("async+")
    if not url.startswith(("redis://", "rediss://")):
        raise ValueError(
            f"circuit breaker storage {url!r} is not a Redis URL: use redis://HOST:PORT "
            "or leave it unset to keep breakers in each process"
        )
    try:
        from coredis import Redis
    except ImportError as exc:  # pragma: no cover - coredis ships with the redis extra
        raise ValueError(
            "shared circuit breakers need the coredis package: pip install 'corral[redis]'"
        ) from exc
    return Redis.from_url(url, decode_responses=True)
