"""A clock that moves only when told, for lease and wall-clock tests without real time."""

from __future__ import annotations

from datetime import datetime, timedelta

from corral.store import utcnow

__all__ = ["ManualClock"]


class ManualClock:
    """Current UTC time as the test sets it: leases expire only when the test says so.

    Pass it as ``clock`` to both :class:`~corral.runtime.Worker` and
    :class:`~corral.runtime.RunExecutor` (or set their ``clock`` attribute): claims, lease
    renewals and expiries, and the wall-clock budget then follow it instead of real time, so a
    loaded machine cannot make a live worker lose its lease.

    Args:
        start: The initial time (aware, UTC); default the real current time.

    Example:
        ```python
        clock = ManualClock()
        before = clock()
        clock.advance(seconds=30)
        assert (clock() - before).total_seconds() == 30
        ```
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        """The current time of this clock."""
        return self.now

    def advance(self, *, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` (may be fractional); returns the new time."""
        self.now += timedelta(seconds=seconds)
        return self.now
