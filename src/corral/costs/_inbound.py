"""Budgets and ledger rows of inbound model calls (the OpenAI-compatible endpoint).

:class:`InboundCosts` is the costs domain's :class:`corral.gateway.models.ModelCallCosts`: the
call's estimate is reserved against the agent's ``limits.max_cost_usd_per_day`` (agent keys)
and the tenant's ``cost_usd_per_day`` quota before the call, and its ``model_calls`` row (run
NULL, agent and principal set) is written with the call's record, releasing the reservation in
the same transaction.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from sqlalchemy import Connection

from corral.costs._budgets import BudgetLimits
from corral.costs._budgets import Reservation as BudgetReservation
from corral.costs._service import Budgets, ModelCall, insert_model_calls
from corral.errors import ModelPriceUnknown
from corral.gateway.models import RecordWriter, Reservation, Served, Usage
from corral.store import Store
from corral.tenancy import Principal, Quotas

__all__ = ["InboundCosts"]


class InboundCosts:
    """Daily budgets and one ledger row per inbound model call.

    Args:
        store: The store (reservations, ledger).
        quotas: The tenants' quotas (``cost_usd_per_day``); ``None``: no tenant budget.
    """

    def __init__(self, store: Store, quotas: Quotas | None = None) -> None:
        self.budgets = Budgets(store)
        self.quotas = quotas

    async def reserve(
        self,
        principal: Principal,
        *,
        amount_usd: Decimal | None,
        agent_day_usd: Decimal | None,
    ) -> Reservation:
        """Hold the call's estimate against the daily budgets, or refuse the call.

        No store round trip when no daily budget applies.

        Args:
            principal: Who makes the call (an agent key's agent has its own budget).
            amount_usd: The call's pessimistic cost, or ``None`` when unpriced.
            agent_day_usd: The agent's ``limits.max_cost_usd_per_day``.

        Returns:
            The reservation (``handle``: the budget reservation, or ``None``).

        Raises:
            BudgetExceeded: a budget would be exceeded (limit, spent and reservation figures).
            ModelPriceUnknown: a budget applies and the model has no price.
        """
        tenant_day = None
        if self.quotas is not None:
            tenant_day = (await self.quotas.limits(principal.tenant_id)).get("cost_usd_per_day")
        agent = _agent_of(principal)
        limits = BudgetLimits(None, agent_day_usd if agent else None, tenant_day)
        if not limits.daily:
            return Reservation(amount_usd)
        if amount_usd is None:
            raise ModelPriceUnknown(
                "The model has no price, and a daily cost budget applies to this call: add a "
                "price to the Model deployment (`prices:`) or to settings.quotas.model_prices.",
                model="?",
            )
        held = await self.budgets.reserve(
            tenant_id=principal.tenant_id,
            amount_usd=amount_usd,
            limits=limits,
            holder=principal.id,
            agent=agent,
        )
        return Reservation(amount_usd, handle=held)

    async def release(self, reservation: Reservation) -> None:
        """Release the reservation of a call that was not made."""
        held = reservation.handle
        if isinstance(held, BudgetReservation):
            await self.budgets.settle(held, None)

    async def settle(
        self,
        reservation: Reservation,
        *,
        principal: Principal,
        served: Served,
        usage: Usage | None,
        cost_usd: Decimal | None,
        trace_id: str,
    ) -> RecordWriter | None:
        """The call's ``model_calls`` row and the release of its reservation.

        Args:
            reservation: What :meth:`reserve` returned.
            principal: Who made the call.
            served: The deployment that answered.
            usage: Its usage; ``None``: flagged, billed at ``cost_usd`` (the reservation).
            cost_usd: The call's cost, or ``None`` when unpriced.
            trace_id: The call's trace (not stored on the row).

        Returns:
            The writes for the call's record transaction.
        """
        held = reservation.handle
        call = ModelCall(
            tenant_id=principal.tenant_id,
            alias=served.alias,
            deployment=served.deployment,
            provider=served.provider,
            model=served.model,
            usage=usage or Usage(),
            cost_usd=cost_usd,
            agent=_agent_of(principal),
            principal=principal.id,
            region=served.region,
            usage_missing=usage is None,
        )
        ids = [held.id] if isinstance(held, BudgetReservation) and held.id else []
        return functools.partial(_write, call=call, reservation_ids=ids)


def _write(connection: Connection, *, call: ModelCall, reservation_ids: list[str]) -> None:
    insert_model_calls(connection, [call], reservation_ids=reservation_ids)


def _agent_of(principal: Principal) -> str | None:
    if principal.kind != "agent":
        return None
    return principal.agent or principal.id.partition(":")[2]
