"""A per-key cache whose misses are loaded once at a time: concurrent callers share the load.

Used by the domains that cache a tenant's settings read from the store (policy engines, quota
limits): when a tenant's entry runs out, one caller reloads it and the others arriving
meanwhile wait for that reload instead of each reading the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlightCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlightCache(Generic[K, V]):
    """One value per key, kept ``ttl_seconds``, with at most one shared load in flight per key.

    - A value is returned for ``ttl_seconds`` counted from when its load *started* (what was
      read may be that old).
    - On a miss, the first caller runs its loader; callers for the same key arriving before it
      finishes wait for it and get its value. Different keys load independently.
    - A loader's exception is raised to that caller and to every caller waiting on it, and
      nothing is cached: the next call loads again. If the loading caller is cancelled, its
      waiters are not: one of them loads instead.
    - :meth:`invalidate` drops the key's value, and a load in flight when it is called is not
      cached (what it read may predate the change); callers arriving afterwards start a new load.

    Single event loop, not thread-safe (like the asyncio objects it uses).

    Args:
        ttl_seconds: How long a loaded value is reused, in seconds of ``clock``; ``0``: never.
        clock: A monotonic clock in seconds (tests pass their own).
    """

    def __init__(self, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._values: dict[K, tuple[float, V]] = {}
        # The load in flight per key: ``(value,)`` when it succeeded, ``None`` when its caller
        # was cancelled, its exception when it failed.
        self._flights: dict[K, asyncio.Future[tuple[V] | None]] = {}
        # Bumped by every invalidation: a load started before one is not cached.
        self._generation = 0

    def invalidate(self, key: K) -> None:
        """Forget ``key``'s value; a load in flight for it is not cached and not joined."""
        self._values.pop(key, None)
        self._flights.pop(key, None)
        self._generation += 1

    def peek(self, key: K) -> V | None:
        """``key``'s cached value if it is still fresh, else ``None``; never loads or waits.

        The synchronous fast path of :meth:`get` (a hit without a coroutine): callers fall
        back to :meth:`get` on ``None``. A value that is itself ``None`` reads as a miss.
        """
        cached = self._values.get(key)
        if cached is not None and self._clock() - cached[0] < self.ttl_seconds:
            return cached[1]
        return None

    async def get(self, key: K, load: Callable[[], Awaitable[V]], *, shared: bool = True) -> V:
        """``key``'s cached value, or the value of one load of it.

        Args:
            key: What the value is of (a tenant id).
            load: Reads the value; called at most once by this call, and only on a miss.
            shared: ``True``: on a miss, join the key's load in flight or start the one others
                join. ``False``: on a miss, run ``load`` in this caller without joining or
                being joined (``load`` uses the caller's own transaction); its value is cached
                all the same.

        Returns:
            The value, cached or just loaded.

        Raises:
            Exception: Whatever ``load`` (this caller's, or the shared one it waited for)
                raised; nothing is cached then.
        """
        while True:
            started = self._clock()
            cached = self._values.get(key)
            if cached is not None and started - cached[0] < self.ttl_seconds:
                return cached[1]
            if not shared:
                return await self._load(key, load, started)
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, load, started)
            # Shielded: a waiter cancelled while waiting must not cancel the others' load.
            outcome = await asyncio.shield(flight)
            if outcome is not None:
                return outcome[0]
            # The loading caller was cancelled: look again (and load if nobody does).

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], started: float) -> V:
        generation = self._generation
        value = await load()
        if generation == self._generation:
            self._values[key] = (started, value)
        return value

    async def _lead(self, key: K, load: Callable[[], Awaitable[V]], started: float) -> V:
        flight: asyncio.Future[tuple[V] | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            value = await self._load(key, load, started)
        except Exception as error:
            self._land(key, flight)
            flight.set_exception(error)
            flight.exception()  # retrieved here: no "never retrieved" log when nobody waits
            raise
        except BaseException:
            self._land(key, flight)
            flight.set_result(None)
            raise
        self._land(key, flight)
        flight.set_result((value,))
        return value

    def _land(self, key: K, flight: asyncio.Future[tuple[V] | None]) -> None:
        # Only this flight: after an invalidation the key may have a newer one.
        if self._flights.get(key) is flight:
            del self._flights[key]
