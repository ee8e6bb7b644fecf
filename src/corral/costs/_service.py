"""The cost ledger: model-call rows, their reports, and the budget service for direct callers."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, cast, get_args

from sqlalchemy import BigInteger, Connection, Table, case, func, select, type_coerce

from corral.costs._budgets import (
    BudgetLimits,
    Reservation,
    check_run_budget,
    release_reservations,
    reserve_budget,
)
from corral.costs._tables import ModelCallRow
from corral.gateway.models import Usage
from corral.store import PICO, SYSTEM, Store, insert_rows, new_id, utcnow

__all__ = [
    "COST_GROUPINGS",
    "Budgets",
    "CostGroup",
    "CostGrouping",
    "ModelCall",
    "cost_by_day_and_agent",
    "cost_report",
    "costs_by_day_and_agent",
    "costs_report",
    "daily_model_usage",
    "insert_model_calls",
    "record_model_call",
]

CostGrouping = Literal["agent", "model", "tenant", "day"]
COST_GROUPINGS: tuple[str, ...] = get_args(CostGrouping)

_CALLS = cast(Table, ModelCallRow.__table__)


@dataclass(frozen=True)
class ModelCall:
    """One model call for the ledger (a ``model_calls`` row).

    Attributes:
        tenant_id: The tenant.
        alias: The model name asked for (alias or ``provider/model``).
        deployment: The deployment that answered.
        provider: Its provider.
        model: The provider's model name.
        usage: Token counts.
        cost_usd: US dollars, or ``None`` when unpriced.
        run_id: The run, or ``None`` for an inbound call.
        step: The run's step index.
        agent: The agent.
        agent_version: The agent version.
        principal: Who the call is accountable to.
        region: The deployment's region.
        cache_hit: Answered from the response cache.
        usage_missing: The provider reported no usage (billed at the reservation).
        created_at: When; default now.
        id: The row id; default a new one.
    """

    tenant_id: str
    alias: str
    deployment: str
    provider: str
    model: str
    usage: Usage
    cost_usd: Decimal | None
    run_id: str | None = None
    step: int | None = None
    agent: str | None = None
    agent_version: str | None = None
    principal: str | None = None
    region: str | None = None
    cache_hit: bool = False
    usage_missing: bool = False
    created_at: datetime = field(default_factory=utcnow)
    id: str = field(default_factory=lambda: new_id("mcall"))

    def document(self) -> dict[str, Any]:
        """A JSON-safe form (kept in a run's pending decision until the step's checkpoint)."""
        row = self.row()
        row.update(
            cost_usd=None if self.cost_usd is None else f"{self.cost_usd:f}",
            created_at=self.created_at.isoformat(),
        )
        return row

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ModelCall:
        """The call back from :meth:`document`."""
        cost = document["cost_usd"]
        return cls(
            tenant_id=document["tenant_id"],
            alias=document["alias"],
            deployment=document["deployment"],
            provider=document["provider"],
            model=document["model"],
            usage=Usage(
                input_tokens=document["input_tokens"],
                output_tokens=document["output_tokens"],
                cache_read_tokens=document["cache_read_tokens"],
                cache_write_tokens=document["cache_write_tokens"],
                reasoning_tokens=document["reasoning_tokens"],
            ),
            cost_usd=None if cost is None else Decimal(cost),
            run_id=document["run_id"],
            step=document["step"],
            agent=document["agent"],
            agent_version=document["agent_version"],
            principal=document["principal"],
            region=document["region"],
            cache_hit=document["cache_hit"],
            usage_missing=document["usage_missing"],
            created_at=datetime.fromisoformat(document["created_at"]),
            id=document["id"],
        )

    def row(self) -> dict[str, Any]:
        """The ``model_calls`` row."""
        usage = self.usage
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "run_id": self.run_id,
            "step": self.step,
            "agent": self.agent,
            "agent_version": self.agent_version,
            "principal": self.principal,
            "alias": self.alias,
            "deployment": self.deployment,
            "provider": self.provider,
            "model": self.model,
            "region": self.region,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "cost_usd": self.cost_usd,
            "cache_hit": self.cache_hit,
            "usage_missing": self.usage_missing,
            "created_at": self.created_at,
        }


def insert_model_calls(
    connection: Connection, calls: Iterable[ModelCall], *, reservation_ids: Iterable[str] = ()
) -> None:
    """Write ledger rows and release the reservations they settle, in the caller's transaction.

    The runtime calls it from a step's fenced checkpoint.

    Args:
        connection: The transaction's connection.
        calls: The calls.
        reservation_ids: Reservations settled by them (deleted).
    """
    insert_rows(connection, _CALLS, [call.row() for call in calls])
    release_reservations(connection, reservation_ids=reservation_ids)


async def record_model_call(
    store: Store, call: ModelCall, *, reservation: Reservation | None = None
) -> None:
    """Write one ledger row (and settle its reservation) in a transaction of its own.

    For callers outside a managed run (the inbound OpenAI-compatible endpoint).

    Args:
        store: The store.
        call: The call.
        reservation: Its budget reservation, released in the same transaction.
    """
    ids = [reservation.id] if reservation is not None and reservation.id else []
    await store.run_sync(
        functools.partial(insert_model_calls, calls=[call], reservation_ids=ids), call.tenant_id
    )


class Budgets:
    """Reserve a model call's cost against its budgets before the call; settle it after.

    Example (a direct caller)::

        reservation = await budgets.reserve(tenant_id=t, amount_usd=estimate, limits=limits,
                                            holder="principal:x")
        ...call the model...
        await budgets.settle(reservation, ModelCall(...))

    Args:
        store: The store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def reserve(
        self,
        *,
        tenant_id: str,
        amount_usd: Decimal,
        limits: BudgetLimits,
        holder: str,
        run_id: str | None = None,
        agent: str | None = None,
        run_spent_usd: Decimal = Decimal(0),
    ) -> Reservation:
        """Hold ``amount_usd`` against the budgets, or refuse the call.

        No store round trip when no daily budget applies (the run budget is checked in
        memory); one transaction when one does.

        Args:
            tenant_id: The tenant.
            amount_usd: The call's pessimistic cost (:func:`estimate_cost`).
            limits: The budgets that apply.
            holder: Who holds it (``worker:{id}``, or the inbound principal).
            run_id: The run, if any.
            agent: The agent, if any.
            run_spent_usd: What the run spent so far.

        Returns:
            The reservation (settle or release it).

        Raises:
            BudgetExceeded: a budget would be exceeded (the figures are on the error).
        """
        if not limits.daily:
            check_run_budget(limits, spent_usd=run_spent_usd, amount_usd=amount_usd, agent=agent)
            return Reservation(None, tenant_id, amount_usd, run_id, agent)
        return await self.store.run_sync(
            functools.partial(
                reserve_budget,
                tenant_id=tenant_id,
                amount_usd=amount_usd,
                limits=limits,
                holder=holder,
                run_id=run_id,
                agent=agent,
                run_spent_usd=run_spent_usd,
            ),
            tenant_id,
        )

    async def settle(self, reservation: Reservation, call: ModelCall | None) -> None:
        """Record the call's real cost and release its reservation, in one transaction.

        Args:
            reservation: The call's reservation.
            call: The ledger row (``None``: the call was not made; only release).
        """
        if call is None and reservation.id is None:
            return
        await self.store.run_sync(
            functools.partial(
                insert_model_calls,
                calls=[call] if call is not None else [],
                reservation_ids=[reservation.id] if reservation.id else [],
            ),
            reservation.tenant_id,
        )


@dataclass(frozen=True)
class CostGroup:
    """One line of a cost report.

    Attributes:
        key: The agent, ``provider/model``, tenant or UTC day (``YYYY-MM-DD``).
        calls: Model calls.
        input_tokens: Prompt tokens.
        output_tokens: Generated tokens.
        cache_read_tokens: Prompt tokens read from a provider cache.
        cost_usd: US dollars.
        unpriced_calls: Calls without a price (not in ``cost_usd``).
        usage_missing_calls: Calls billed at their reservation (no usage reported).
    """

    key: str
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost_usd: Decimal
    unpriced_calls: int
    usage_missing_calls: int


def _group_columns(by: str, dialect: str) -> list[Any]:
    if by == "agent":
        return [func.coalesce(_CALLS.c.agent, "(none)")]
    if by == "model":
        return [_CALLS.c.provider, _CALLS.c.model]
    if by == "tenant":
        return [_CALLS.c.tenant_id]
    if dialect == "postgresql":
        return [func.to_char(func.timezone("UTC", _CALLS.c.created_at), "YYYY-MM-DD")]
    # Stored as naive UTC text: the first 10 characters are the day (4-5x cheaper than
    # strftime() over the many rows a dashboard groups).
    return [func.substr(_CALLS.c.created_at, 1, 10)]


def cost_report(
    connection: Connection, *, by: str, since: datetime, tenant_id: str | None
) -> list[CostGroup]:
    """Model calls since ``since`` grouped by agent, model, tenant or UTC day.

    Args:
        connection: A transaction scoped to ``tenant_id`` (or the system scope for ``None``).
        by: ``agent``, ``model``, ``tenant`` or ``day``.
        since: Calls from this time on.
        tenant_id: One tenant's calls, or ``None`` for every tenant's (platform admins).

    Returns:
        The groups, most expensive first.
    """
    keys = _group_columns(by, connection.dialect.name)
    raw_cost = type_coerce(_CALLS.c.cost_usd, BigInteger())
    statement = (
        select(
            *keys,
            func.count(),
            func.coalesce(func.sum(_CALLS.c.input_tokens), 0),
            func.coalesce(func.sum(_CALLS.c.output_tokens), 0),
            func.coalesce(func.sum(_CALLS.c.cache_read_tokens), 0),
            func.coalesce(func.sum(raw_cost), 0),
            func.count(case((_CALLS.c.cost_usd.is_(None), 1))),
            func.count(case((_CALLS.c.usage_missing, 1))),
        )
        .where(_CALLS.c.created_at >= since)
        .group_by(*keys)
    )
    if tenant_id is not None:
        statement = statement.where(_CALLS.c.tenant_id == tenant_id)
    groups = []
    n = len(keys)
    for row in connection.execute(statement):
        key = "/".join(str(part) for part in row[:n])
        calls, inputs, outputs, cached, cost, unpriced, missing = row[n:]
        groups.append(
            CostGroup(
                key,
                int(calls),
                int(inputs),
                int(outputs),
                int(cached),
                Decimal(int(cost)) * PICO,
                int(unpriced),
                int(missing),
            )
        )
    groups.sort(key=lambda g: (-g.cost_usd, g.key))
    return groups


async def costs_report(
    store: Store, *, by: str, since: datetime, tenant_id: str | None
) -> list[CostGroup]:
    """:func:`cost_report` in a read transaction of its own (``tenant_id=None``: all tenants)."""
    scope = SYSTEM if tenant_id is None else tenant_id
    return await store.read_sync(
        functools.partial(cost_report, by=by, since=since, tenant_id=tenant_id), scope
    )


def cost_by_day_and_agent(
    connection: Connection, *, since: datetime, tenant_id: str
) -> list[tuple[str, str, Decimal]]:
    """The tenant's model-call cost since ``since`` per UTC day and agent, in one statement.

    Grouped as :func:`cost_report` groups ``by="day"`` and ``by="agent"`` (a call without an
    agent counts as ``(none)``), so summing over one key gives that report's ``cost_usd``; it
    reads only the ``(tenant_id, created_at, agent, cost_usd)`` index (migration 0021).

    Args:
        connection: A transaction scoped to ``tenant_id``.
        since: Calls from this time on.
        tenant_id: The tenant.

    Returns:
        ``(YYYY-MM-DD, agent, US dollars)`` for each day and agent with calls, in no order.
    """
    dialect = connection.dialect.name
    day, agent = _group_columns("day", dialect)[0], _group_columns("agent", dialect)[0]
    cost = func.coalesce(func.sum(type_coerce(_CALLS.c.cost_usd, BigInteger())), 0)
    rows = connection.execute(
        select(day, agent, cost)
        .where(_CALLS.c.tenant_id == tenant_id, _CALLS.c.created_at >= since)
        .group_by(day, agent)
    )
    return [(str(when), str(name), Decimal(int(usd)) * PICO) for when, name, usd in rows]


async def costs_by_day_and_agent(
    store: Store, *, since: datetime, tenant_id: str
) -> list[tuple[str, str, Decimal]]:
    """:func:`cost_by_day_and_agent` in a read transaction of its own."""
    return await store.read_sync(
        functools.partial(cost_by_day_and_agent, since=since, tenant_id=tenant_id), tenant_id
    )


def daily_model_usage(
    connection: Connection, tenant_id: str, since: datetime
) -> tuple[int, Decimal]:
    """The tenant's model tokens (input + output) and cost since ``since``, from the ledger.

    Reservations of calls in flight are not included (the tenancy quota report shows spend).

    Args:
        connection: A transaction scoped to the tenant.
        tenant_id: The tenant.
        since: Usually 00:00 UTC today.

    Returns:
        ``(tokens, US dollars)``.
    """
    row = connection.execute(
        select(
            func.coalesce(func.sum(_CALLS.c.input_tokens + _CALLS.c.output_tokens), 0),
            func.coalesce(func.sum(type_coerce(_CALLS.c.cost_usd, BigInteger())), 0),
        ).where(_CALLS.c.tenant_id == tenant_id, _CALLS.c.created_at >= since)
    ).one()
    return int(row[0]), Decimal(int(row[1])) * PICO
