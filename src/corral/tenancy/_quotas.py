"""Tenant quotas: checked before a run starts and before each model call.

Days are UTC calendar days: a daily quota resets at 00:00 UTC, which is what ``Retry-After``
counts down to. Concurrent runs are those ``QUEUED`` or ``RUNNING`` (a run waiting for a person
holds no worker and does not count). Checks read the store; two requests racing for the last
unit may both pass on PostgreSQL (SQLite serialises writers), so a limit can be overshot by the
number of API replicas at most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral._singleflight import SingleFlightCache
from corral.errors import QuotaExceeded
from corral.settings import QuotaSettings
from corral.store import Store, utcnow
from corral.tenancy._tables import QuotaRow

__all__ = ["ModelUsageReader", "QuotaUsage", "Quotas", "check_run_start", "day_start"]

ModelUsageReader = Callable[[Connection, str, datetime], tuple[int, Decimal]]
"""``(connection, tenant_id, since) -> (model tokens, US dollars)`` from the cost ledger."""

_MODEL_QUOTAS = ("model_tokens_per_day", "cost_usd_per_day")


def day_start(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _seconds_to_midnight(now: datetime) -> int:
    return int((day_start(now) + timedelta(days=1) - now).total_seconds()) + 1


@dataclass(frozen=True)
class QuotaUsage:
    """One quota: its limit (``None``: unlimited) and today's value."""

    name: str
    limit: Decimal | None
    current: Decimal
    resets_at: datetime | None


class Quotas:
    """Reads quota limits (cached briefly) and the usage they limit.

    Args:
        store: The store.
        settings: The ``quotas`` settings group (model prices, cache lifetime).
        model_usage: Reads a tenant's model tokens and US dollars since a time from the cost
            ledger, in the caller's transaction (:func:`corral.costs.daily_model_usage`;
            passed in because the ledger's domain sits above this one).
    """

    def __init__(
        self, store: Store, settings: QuotaSettings, *, model_usage: ModelUsageReader
    ) -> None:
        self.store = store
        self.settings = settings
        self.model_usage = model_usage
        # One reload per tenant at a time: callers arriving while it runs wait for it.
        self._limits: SingleFlightCache[str, dict[str, Decimal]] = SingleFlightCache(
            ttl_seconds=settings.cache_seconds
        )

    def invalidate(self, tenant_id: str) -> None:
        """Forget a tenant's cached limits (they changed through this process)."""
        self._limits.invalidate(tenant_id)

    async def limits(
        self, tenant_id: str, *, session: AsyncSession | None = None
    ) -> dict[str, Decimal]:
        """The tenant's limits by quota name.

        Cached for ``settings.cache_seconds``. Without ``session``, a cache miss is reloaded
        once per tenant: callers arriving during that reload wait for it and get its result, or
        its error (with ``session``, the caller's own transaction reads them).

        Args:
            tenant_id: The tenant.
            session: The caller's open session, used on a cache miss. Pass it from inside a
                transaction: a second pooled connection opened while the transaction holds
                SQLite's write lock (or the last free connection) can wait on it forever.

        Returns:
            ``{quota name: limit}``; a quota without a row is unlimited (absent).
        """
        limits = self._limits.peek(tenant_id)
        if limits is not None:
            return limits
        if session is not None:
            return await self._limits.get(
                tenant_id, lambda: _read_limits(session, tenant_id), shared=False
            )
        return await self._limits.get(tenant_id, lambda: self._reload(tenant_id))

    async def _reload(self, tenant_id: str) -> dict[str, Decimal]:
        async with self.store.read(tenant_id) as own:
            return await _read_limits(own, tenant_id)

    async def check_run_start(self, session: AsyncSession, tenant_id: str) -> None:
        """Refuse a new run over ``runs_per_day`` or ``concurrent_runs``.

        Args:
            session: The run-creating transaction; every read, the limits' included, goes
                through it (no second connection while it holds the write lock).
            tenant_id: The tenant.

        Raises:
            QuotaExceeded: with the quota, limit, current value and seconds until it resets.
        """
        limits = await self.limits(tenant_id, session=session)
        if "runs_per_day" not in limits and "concurrent_runs" not in limits:
            return
        await session.run_sync(lambda sync: check_run_start(sync.connection(), tenant_id, limits))

    async def check_model_call(self, tenant_id: str) -> None:
        """Refuse a model call over ``model_tokens_per_day`` or ``cost_usd_per_day``.

        Reads through a short transaction of its own (the model call runs outside any). The
        managed loop also reserves each call's cost against ``cost_usd_per_day``
        (:class:`corral.costs.Budgets`), which counts the calls in flight too.

        Args:
            tenant_id: The tenant.

        Raises:
            QuotaExceeded: with the quota, limit, current value and seconds until it resets
                (00:00 UTC).
        """
        limits = await self.limits(tenant_id)
        if not any(name in limits for name in _MODEL_QUOTAS):
            return
        now = utcnow()
        async with self.store.read(tenant_id) as session:
            usage = await self._model_usage(session, tenant_id, now)
        for name in _MODEL_QUOTAS:
            limit = limits.get(name)
            if limit is not None and usage[name] >= limit:
                _raise(name, limit, usage[name], _seconds_to_midnight(now))

    async def usage(self, tenant_id: str) -> list[QuotaUsage]:
        """Every quota of the tenant with today's value, limited or not."""
        limits = await self.limits(tenant_id)
        now = utcnow()
        async with self.store.read(tenant_id) as session:
            values = {
                **await session.run_sync(
                    lambda sync: _run_usage(sync.connection(), tenant_id, now)
                ),
                **await self._model_usage(session, tenant_id, now),
            }
        resets = day_start(now) + timedelta(days=1)
        return [
            QuotaUsage(
                name, limits.get(name), values[name], None if name == "concurrent_runs" else resets
            )
            for name in ("runs_per_day", "concurrent_runs", *_MODEL_QUOTAS)
        ]

    async def _model_usage(
        self, session: AsyncSession, tenant_id: str, now: datetime
    ) -> dict[str, Decimal]:
        # From the cost ledger: every model call of the tenant today, priced when it was made.
        tokens, cost = await session.run_sync(
            lambda sync: self.model_usage(sync.connection(), tenant_id, day_start(now))
        )
        return {"model_tokens_per_day": Decimal(tokens), "cost_usd_per_day": cost}


def check_run_start(connection: Connection, tenant_id: str, limits: dict[str, Decimal]) -> None:
    """Refuse a new run over ``runs_per_day`` or ``concurrent_runs``, in the caller's transaction.

    The synchronous form of :meth:`Quotas.check_run_start`, for a run created on the store's
    writer (:meth:`corral.store.Store.run_sync`); reads nothing when neither quota is limited.

    Args:
        connection: The run-creating transaction's connection.
        tenant_id: The tenant.
        limits: The tenant's limits (:meth:`Quotas.limits`).

    Raises:
        QuotaExceeded: with the quota, limit, current value and seconds until it resets.
    """
    if "runs_per_day" not in limits and "concurrent_runs" not in limits:
        return
    now = utcnow()
    usage = _run_usage(connection, tenant_id, now)
    for name, retry in (
        ("runs_per_day", _seconds_to_midnight(now)),
        ("concurrent_runs", 10),
    ):
        limit = limits.get(name)
        if limit is not None and usage[name] >= limit:
            _raise(name, limit, usage[name], retry)


async def _read_limits(session: AsyncSession, tenant_id: str) -> dict[str, Decimal]:
    rows = await session.execute(
        select(QuotaRow.name, QuotaRow.limit).where(QuotaRow.tenant_id == tenant_id)
    )
    return {name: _plain(Decimal(limit)) for name, limit in rows}


def _run_usage(connection: Connection, tenant_id: str, now: datetime) -> dict[str, Decimal]:
    from corral.runtime._tables import RunRow

    today = connection.scalar(
        select(func.count()).where(
            RunRow.tenant_id == tenant_id, RunRow.created_at >= day_start(now)
        )
    )
    active = connection.scalar(
        select(func.count()).where(
            RunRow.tenant_id == tenant_id, RunRow.status.in_(("QUEUED", "RUNNING"))
        )
    )
    return {"runs_per_day": Decimal(today or 0), "concurrent_runs": Decimal(active or 0)}


def _raise(name: str, limit: Decimal, current: Decimal, retry_after: int) -> Any:
    shown_limit, shown_current = _show(limit), _show(current)
    raise QuotaExceeded(
        f"Quota {name!r} is used up: {shown_current} of {shown_limit}. It resets in "
        f"{retry_after} s; a tenant admin can raise it with "
        f"`corral quotas set {name} LIMIT`.",
        quota=name,
        limit=shown_limit,
        current=shown_current,
        retry_after_seconds=retry_after,
    )


def _plain(value: Decimal) -> Decimal:
    """``2.000000`` -> ``2``; ``0.500000`` -> ``0.5`` (never exponent notation)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def _show(value: Decimal) -> str:
    return str(_plain(value))
