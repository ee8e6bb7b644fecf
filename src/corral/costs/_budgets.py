"""Cost budgets, enforced before a model call by reserving its pessimistic cost.

Three budgets apply to a managed run's calls: the run's (``limits.max_cost_usd``), the agent's
per UTC day (``limits.max_cost_usd_per_day``) and the tenant's per UTC day (the
``cost_usd_per_day`` quota). An inbound call (the OpenAI-compatible endpoint) has the daily ones.

Before a call, :func:`estimate_cost` prices the request pessimistically: its input tokens
estimated from its size (:func:`estimate_input_tokens`) at the input rate, plus every output
token it may generate (``max_output_tokens``, or :data:`DEFAULT_MAX_OUTPUT_TOKENS`) at the output
rate. The run budget is checked in memory (one run makes one call at a time and knows what it
spent). The daily budgets are checked and the reservation inserted in one transaction
(:func:`reserve_budget`): on PostgreSQL under a transaction-scoped advisory lock per tenant, so
concurrent reservations of one tenant are serialised; on SQLite the single writer serialises
them. Spent is the day's settled cost (``model_calls``) plus every reservation still held, so
concurrent calls can never together overspend: at most the last call's estimation error (its
real cost above its estimate) goes over a budget.

A reservation is deleted when its call is settled (the cost row written in the same
transaction), when its run pauses, and when its run's lease is reclaimed (the worker holding
it died).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    ScalarSelect,
    Table,
    bindparam,
    func,
    select,
    text,
    type_coerce,
)

from corral.costs._tables import BudgetReservationRow, ModelCallRow
from corral.errors import BudgetExceeded
from corral.gateway.models import (
    BYTES_PER_TOKEN,
    DEFAULT_MAX_OUTPUT_TOKENS,
    ModelRequest,
    Price,
    cost_upper_bound,
)
from corral.store import PICO, new_id, utcnow

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "BudgetLimits",
    "Reservation",
    "check_run_budget",
    "day_start",
    "estimate_cost",
    "estimate_input_tokens",
    "release_reservations",
    "reserve_budget",
]

_MESSAGE_OVERHEAD_TOKENS = 4
"""Chat-format tokens around each message (role markers)."""

_RESERVATIONS = cast(Table, BudgetReservationRow.__table__)
_CALLS = cast(Table, ModelCallRow.__table__)


def day_start(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day (daily budgets reset then)."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class BudgetLimits:
    """The cost budgets a call is checked against, in US dollars; ``None``: no such budget.

    Attributes:
        run_usd: The run's ``limits.max_cost_usd``.
        agent_day_usd: The agent's ``limits.max_cost_usd_per_day``.
        tenant_day_usd: The tenant's ``cost_usd_per_day`` quota.
    """

    run_usd: Decimal | None = None
    agent_day_usd: Decimal | None = None
    tenant_day_usd: Decimal | None = None

    @property
    def daily(self) -> bool:
        """Whether a daily budget applies (a reservation row is needed)."""
        return self.agent_day_usd is not None or self.tenant_day_usd is not None

    @property
    def any(self) -> bool:
        """Whether any budget applies."""
        return self.run_usd is not None or self.daily


@dataclass(frozen=True)
class Reservation:
    """A model call's reserved pessimistic cost.

    Attributes:
        id: The ``budget_reservations`` row, or ``None`` when no daily budget applied (the
            reservation was checked in memory only and holds no row).
        tenant_id: The tenant.
        amount_usd: The estimate, US dollars.
        run_id: The run, or ``None`` for an inbound call.
        agent: The agent, if any.
    """

    id: str | None
    tenant_id: str
    amount_usd: Decimal
    run_id: str | None = None
    agent: str | None = None


def estimate_input_tokens(request: ModelRequest) -> int:
    """An upper-bound estimate of the request's prompt tokens (no tokenizer).

    UTF-8 bytes of every message (content and tool calls) and tool definition, divided by
    :data:`BYTES_PER_TOKEN`, plus a few tokens per message for the chat format.

    Args:
        request: The model call.

    Returns:
        Estimated prompt tokens.
    """
    size = 0
    for message in request.messages:
        size += len(message.content.encode()) + _MESSAGE_OVERHEAD_TOKENS * BYTES_PER_TOKEN
        for call in message.tool_calls:
            size += len(call.name) + len(orjson.dumps(call.arguments))
    for tool in request.tools:
        size += len(tool.name) + len(tool.description.encode())
        size += len(orjson.dumps(tool.input_schema))
    return math.ceil(size / BYTES_PER_TOKEN)


def estimate_cost(
    request: ModelRequest,
    price: Price,
    *,
    default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
) -> Decimal:
    """The pessimistic cost of a call, US dollars: the amount its budgets reserve.

    Every estimated prompt token at the input rate (no cache discount is assumed) plus every
    token the call may generate at the output rate.

    Args:
        request: The model call.
        price: The rates of the model it goes to (:func:`corral.gateway.models.model_price`).
        default_max_output_tokens: Output tokens assumed when the request sets no cap.

    Returns:
        US dollars, rounded up to the picodollar.
    """
    output = request.max_output_tokens or default_max_output_tokens
    return cost_upper_bound(price, estimate_input_tokens(request), output)


def _show(value: Decimal) -> str:
    """Dollars for a person: fixed notation, no trailing zeros (``0.0015``)."""
    text_ = f"{value:f}"
    if "." in text_:
        text_ = text_.rstrip("0").rstrip(".")
    return text_ or "0"


def _refuse(
    budget: str, limit: Decimal, spent: Decimal, amount: Decimal, *, how: str
) -> BudgetExceeded:
    return BudgetExceeded(
        f"Budget {budget!r} would be exceeded: {_show(spent)} USD of {_show(limit)} USD spent "
        f"or reserved, and the next model call is estimated at up to {_show(amount)} USD. "
        f"{how}",
        limit=budget,
        limit_usd=_show(limit),
        spent_usd=_show(spent),
        reservation_usd=_show(amount),
    )


def check_run_budget(
    limits: BudgetLimits, *, spent_usd: Decimal, amount_usd: Decimal, agent: str | None
) -> None:
    """Refuse a call whose reservation would take the run over ``limits.run_usd``.

    Args:
        limits: The budgets.
        spent_usd: What the run has spent so far.
        amount_usd: The call's reservation.
        agent: The run's agent (named in the message).

    Raises:
        BudgetExceeded: ``limit="max_cost_usd"``, with the figures.
    """
    if limits.run_usd is not None and spent_usd + amount_usd > limits.run_usd:
        raise _refuse(
            "max_cost_usd",
            limits.run_usd,
            spent_usd,
            amount_usd,
            how=f"Raise `limits.max_cost_usd` of agent {agent!r} to let its runs spend more.",
        )


def reserve_budget(
    connection: Connection,
    *,
    tenant_id: str,
    amount_usd: Decimal,
    limits: BudgetLimits,
    holder: str,
    run_id: str | None = None,
    agent: str | None = None,
    run_spent_usd: Decimal = Decimal(0),
    now: datetime | None = None,
) -> Reservation:
    """Check a call's reservation against its budgets and hold it, in one transaction.

    Args:
        connection: The transaction's connection (scoped to ``tenant_id``).
        tenant_id: The tenant.
        amount_usd: The call's pessimistic cost (:func:`estimate_cost`).
        limits: The budgets that apply.
        holder: Who holds the reservation (``worker:{id}``, or the inbound caller).
        run_id: The run, if the call belongs to one.
        agent: The agent, if any (its daily budget).
        run_spent_usd: What the run has spent so far (its budget is checked in memory).
        now: The time (the day of the daily budgets); default now.

    Returns:
        The reservation; its ``id`` is ``None`` when no daily budget applies (no row).

    Raises:
        BudgetExceeded: the reservation would exceed a budget (``limit`` is
            ``max_cost_usd``, ``max_cost_usd_per_day`` or ``quota:cost_usd_per_day``); nothing
            is held.
    """
    check_run_budget(limits, spent_usd=run_spent_usd, amount_usd=amount_usd, agent=agent)
    if not limits.daily:
        return Reservation(None, tenant_id, amount_usd, run_id, agent)
    now = now or utcnow()
    if connection.dialect.name == "postgresql":
        # One tenant's reservations one at a time (released at commit); other tenants' and
        # everything else go on.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"corral.budget:{tenant_id}"},
        )
    tenant_spent, agent_spent = _spent(connection, tenant_id, agent, day_start(now))
    if limits.agent_day_usd is not None and agent_spent + amount_usd > limits.agent_day_usd:
        raise _refuse(
            "max_cost_usd_per_day",
            limits.agent_day_usd,
            agent_spent,
            amount_usd,
            how=f"It resets at 00:00 UTC; raise `limits.max_cost_usd_per_day` of agent "
            f"{agent!r} to let it spend more today.",
        )
    if limits.tenant_day_usd is not None and tenant_spent + amount_usd > limits.tenant_day_usd:
        raise _refuse(
            "quota:cost_usd_per_day",
            limits.tenant_day_usd,
            tenant_spent,
            amount_usd,
            how="It resets at 00:00 UTC; a tenant admin can raise it with "
            "`corral quotas set cost_usd_per_day LIMIT`.",
        )
    reservation = Reservation(new_id("rsv"), tenant_id, amount_usd, run_id, agent)
    connection.execute(
        _RESERVATIONS.insert(),
        [
            {
                "id": reservation.id,
                "tenant_id": tenant_id,
                "run_id": run_id,
                "agent": agent,
                "amount_usd": amount_usd,
                "holder": holder,
                "created_at": now,
            }
        ],
    )
    return reservation


def _spent(
    connection: Connection, tenant_id: str, agent: str | None, since: datetime
) -> tuple[Decimal, Decimal]:
    """``(tenant's, agent's)`` settled cost since ``since`` plus reservations held, one query."""

    def total(table: Table, column: str, *where: ColumnElement[bool]) -> ScalarSelect[Any]:
        return (
            # Raw picodollars: summed as integers, converted once below.
            select(func.coalesce(func.sum(type_coerce(table.c[column], BigInteger())), 0))
            .where(table.c.tenant_id == tenant_id, table.c.created_at >= since, *where)
            .scalar_subquery()
        )

    # A reservation counts on its day only: one leaked by a path that never settles it (a
    # run ended while paused) cannot hold a budget beyond that day.
    row = connection.execute(
        select(
            total(_CALLS, "cost_usd"),
            total(_CALLS, "cost_usd", _CALLS.c.agent == agent),
            total(_RESERVATIONS, "amount_usd"),
            total(_RESERVATIONS, "amount_usd", _RESERVATIONS.c.agent == agent),
        )
    ).one()
    calls, agent_calls, held, agent_held = (Decimal(int(v or 0)) * PICO for v in row)
    return calls + held, agent_calls + agent_held


def release_reservations(
    connection: Connection,
    *,
    reservation_ids: Iterable[str] = (),
    run_ids: Iterable[str] = (),
) -> None:
    """Delete reservations by id, and every reservation of the given runs.

    Args:
        connection: The transaction's connection.
        reservation_ids: Reservations settled or abandoned.
        run_ids: Runs whose reservations are all released (paused, or reclaimed from a dead
            worker).
    """
    ids, runs = list(reservation_ids), list(run_ids)
    if ids:
        connection.execute(_RELEASE_BY_ID, {"b_ids": ids})
    if runs:
        connection.execute(_RELEASE_BY_RUN, {"b_runs": runs})


# Built once (a step settles its reservation in every checkpoint): an expanding IN.
_RELEASE_BY_ID = _RESERVATIONS.delete().where(
    _RESERVATIONS.c.id.in_(bindparam("b_ids", expanding=True))
)
_RELEASE_BY_RUN = _RESERVATIONS.delete().where(
    _RESERVATIONS.c.run_id.in_(bindparam("b_runs", expanding=True))
)
