"""SingleFlightCache: one load per key in flight, shared by its callers, errors not cached.

Ordering comes from asyncio Events and the event loop's FIFO ready queue: tasks created before
the test awaits a loader's ``entered`` event have all taken their first step (and joined the
load in flight) by the time the test resumes. Nothing here depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from corral._singleflight import SingleFlightCache


class Gate:
    """A loader that counts its calls and returns (or raises) only once released."""

    def __init__(self, value: str, *, error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


def loaded(value: str) -> Callable[[], Awaitable[str]]:
    async def load() -> str:
        return value

    return load


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_callers_share_one_load() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    gate = Gate("v1")
    callers = [asyncio.ensure_future(cache.get("t", gate)) for _ in range(10)]
    await gate.entered.wait()
    gate.release.set()
    assert await asyncio.gather(*callers) == ["v1"] * 10
    assert gate.calls == 1
    assert await cache.get("t", Gate("unused")) == "v1"  # cached: no second load


async def test_different_keys_load_separately() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    a, b = Gate("a"), Gate("b")
    for_a = asyncio.ensure_future(cache.get("a", a))
    for_b = asyncio.ensure_future(cache.get("b", b))
    await a.entered.wait()
    await b.entered.wait()  # both in flight at once: b does not wait for a
    b.release.set()
    assert await for_b == "b"
    assert not for_a.done()
    a.release.set()
    assert await for_a == "a"
    assert (a.calls, b.calls) == (1, 1)


async def test_a_value_expires_after_ttl_seconds_from_the_start_of_its_load() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=10, clock=clock)
    assert await cache.get("t", loaded("v1")) == "v1"
    clock.now += 9.5
    assert await cache.get("t", loaded("v2")) == "v1"
    clock.now += 0.5
    assert await cache.get("t", loaded("v2")) == "v2"


async def test_ttl_zero_loads_every_time() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=0, clock=Clock())
    assert await cache.get("t", loaded("v1")) == "v1"
    assert await cache.get("t", loaded("v2")) == "v2"


async def test_invalidate_forces_a_reload() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    assert await cache.get("t", loaded("v1")) == "v1"
    assert await cache.get("u", loaded("u1")) == "u1"
    cache.invalidate("t")
    assert await cache.get("t", loaded("v2")) == "v2"
    assert await cache.get("u", loaded("u2")) == "u1"  # other keys keep their values


async def test_a_load_in_flight_during_invalidate_is_not_cached_nor_joined() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    stale, fresh = Gate("stale"), Gate("fresh")
    before = asyncio.ensure_future(cache.get("t", stale))
    await stale.entered.wait()
    cache.invalidate("t")  # what `stale` reads may predate the change
    after = asyncio.ensure_future(cache.get("t", fresh))
    await fresh.entered.wait()  # a new load, not the one in flight
    stale.release.set()
    assert await before == "stale"
    fresh.release.set()
    assert await after == "fresh"
    assert await cache.get("t", Gate("unused")) == "fresh"


async def test_a_failing_load_reaches_every_waiter_and_the_next_call_retries() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    boom = RuntimeError("store unavailable")
    gate = Gate("unused", error=boom)
    callers = [asyncio.ensure_future(cache.get("t", gate)) for _ in range(5)]
    await gate.entered.wait()
    gate.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(outcome is boom for outcome in outcomes)
    assert gate.calls == 1
    assert await cache.get("t", loaded("v1")) == "v1"  # the error was not cached


async def test_a_failing_load_with_no_waiters_raises_to_its_caller() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)

    async def fail() -> str:
        raise ValueError("bad policy")

    with pytest.raises(ValueError, match="bad policy"):
        await cache.get("t", fail)
    assert await cache.get("t", loaded("v1")) == "v1"


async def test_a_cancelled_loader_leaves_a_waiter_to_load() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    first, second = Gate("first"), Gate("second")
    leader = asyncio.ensure_future(cache.get("t", first))
    waiter = asyncio.ensure_future(cache.get("t", second))
    await first.entered.wait()
    leader.cancel()
    await second.entered.wait()  # the waiter was not cancelled: it loads instead
    second.release.set()
    assert await waiter == "second"
    assert leader.cancelled()
    assert first.calls == second.calls == 1


async def test_a_cancelled_waiter_does_not_cancel_the_load() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    gate = Gate("v1")
    leader = asyncio.ensure_future(cache.get("t", gate))
    waiter = asyncio.ensure_future(cache.get("t", Gate("unused")))
    await gate.entered.wait()
    waiter.cancel()
    gate.release.set()
    assert await leader == "v1"
    assert waiter.cancelled()


async def test_an_unshared_load_runs_in_its_caller_and_is_cached() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    shared = Gate("shared")
    in_flight = asyncio.ensure_future(cache.get("t", shared))
    await shared.entered.wait()
    # Not joined: its caller reads in its own transaction (it may hold a lock the shared one needs).
    assert await cache.get("t", loaded("own"), shared=False) == "own"
    assert await cache.get("t", Gate("unused")) == "own"
    shared.release.set()
    assert await in_flight == "shared"


async def test_peek_returns_only_a_fresh_cached_value() -> None:
    clock = Clock()
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=10, clock=clock)
    assert cache.peek("t") is None  # nothing loaded
    assert await cache.get("t", loaded("v1")) == "v1"
    assert cache.peek("t") == "v1"
    assert cache.peek("other") is None
    clock.now += 9.5
    assert cache.peek("t") == "v1"
    clock.now += 0.5
    assert cache.peek("t") is None  # expired
    assert await cache.get("t", loaded("v2")) == "v2"
    assert cache.peek("t") == "v2"
    cache.invalidate("t")
    assert cache.peek("t") is None  # invalidated


async def test_peek_does_not_see_a_load_in_flight() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(ttl_seconds=60)
    gate = Gate("v1")
    caller = asyncio.ensure_future(cache.get("t", gate))
    await gate.entered.wait()
    assert cache.peek("t") is None
    gate.release.set()
    assert await caller == "v1"
    assert cache.peek("t") == "v1"
