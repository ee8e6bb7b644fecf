"""Cost of the run's model calls: budget limits, estimates, reservations and the ledger row.

A mixin of :class:`~corral.runtime.RunExecutor`: before a model call the run reserves the
call's pessimistic estimate against its budgets (:meth:`Metering._reserve`); after it the
call's cost goes onto the run's total and into a :class:`~corral.costs.ModelCall` row for
the step's checkpoint (:meth:`Metering._meter`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from corral.costs import BudgetLimits, Budgets, ModelCall
from corral.errors import BudgetExceeded, ModelPriceUnknown, NotFound
from corral.gateway.models import ModelGateway, ModelResponse, Pricer, Served, cost_upper_bound
from corral.runtime._state import RunState, StepRecord, Terminal
from corral.tenancy import Quotas

__all__ = ["Metering"]


class Metering:
    """Mixin of :class:`~corral.runtime.RunExecutor`: budgets and costs of model calls."""

    clock: Callable[[], datetime]
    quotas: Quotas | None
    models: ModelGateway
    budgets: Budgets
    pricer: Pricer

    async def _budget_limits(self, state: RunState) -> BudgetLimits:
        """The cost budgets of the run's next model call (tenant limits are cached)."""
        limits = state.spec.limits
        tenant_day = None
        if self.quotas is not None:
            tenant_day = (await self.quotas.limits(state.tenant_id)).get("cost_usd_per_day")
        return BudgetLimits(limits.max_cost_usd, limits.max_cost_usd_per_day, tenant_day)

    def _estimate(self, state: RunState, model: str, served: Served | None = None) -> Decimal:
        """The pessimistic cost of the call in progress if ``model`` answers it, US dollars.

        Raises:
            ModelPriceUnknown: ``model`` has no price.
        """
        provider, _, name = model.partition("/")
        price = self.pricer.rates(provider, name, served.price if served is not None else None)
        return cost_upper_bound(price, state.estimate_input_tokens, state.estimate_output_tokens)

    async def _reserve(
        self, state: RunState, limits: BudgetLimits, worker_id: str, started: datetime
    ) -> tuple[StepRecord, Terminal] | None:
        """Reserve the next call's estimate against the run's budgets; the ending, or None.

        One store transaction when a daily budget applies (none for the run budget alone).
        """
        model = state.models[0]
        try:
            amount = await self._alias_estimate(state, model)
            state.reservation = await self.budgets.reserve(
                tenant_id=state.tenant_id,
                amount_usd=amount,
                limits=limits,
                holder=f"worker:{worker_id}",
                run_id=state.run_id,
                agent=state.agent_name,
                run_spent_usd=state.cost_usd,
            )
        except ModelPriceUnknown as exc:
            error = f"{exc.message} (the run has a cost budget, which needs the price)"
            record = StepRecord("model_error", model, {"error": error}, started, error)
            return record, Terminal("FAILED", "model_price_unknown", error=error)
        except BudgetExceeded as exc:
            record = StepRecord("model_error", model, {"error": exc.message}, started, exc.message)
            return record, Terminal("BUDGET_EXCEEDED", exc.limit, error=exc.message)
        return None

    async def _alias_estimate(self, state: RunState, model: str) -> Decimal:
        """The estimate for ``model``; for an alias, its most expensive deployment's.

        Raises:
            ModelPriceUnknown: a deployment has no price.
        """
        if "/" in model:
            return self._estimate(state, model)
        try:
            deployments = await self.models.catalog.resolve(state.tenant_id, model)
        except NotFound:
            return Decimal(0)  # the gateway fails the call naming the known aliases
        return max(
            (self._estimate(state, d.model_name, d.served()) for d in deployments),
            default=Decimal(0),
        )

    def _meter(self, state: RunState, model: str, response: ModelResponse) -> ModelCall:
        """The ledger row of the call just answered; adds its cost to the run's total.

        Priced from the usage at the deployment's price (``response.served.price``), else the
        settings' override, else the price table; a cache hit costs 0; a call without usage is
        billed at its reservation (or the estimate) and flagged. A model without any price
        and no budget to enforce is recorded unpriced (``cost_usd`` ``None``).
        """
        served = response.served
        provider, _, name = model.partition("/")
        if served is not None:
            provider, name = served.provider, served.model
        cost: Decimal | None
        if response.cache_hit:
            cost = Decimal(0)
        elif response.cost_usd is not None:
            cost = response.cost_usd
        elif response.usage_missing:
            reserved = state.reservation
            try:
                cost = (
                    reserved.amount_usd
                    if reserved is not None
                    else self._estimate(state, f"{provider}/{name}")
                )
            except ModelPriceUnknown:
                cost = None
        else:
            price = served.price if served is not None else None
            cost = self.pricer.cost(provider, name, response.usage, price)
        if cost is not None:
            state.cost_usd += cost
        return ModelCall(
            tenant_id=state.tenant_id,
            alias=served.alias if served is not None else model,
            deployment=served.deployment if served is not None else model,
            provider=provider,
            model=name,
            usage=response.usage,
            cost_usd=cost,
            run_id=state.run_id,
            step=state.step_count,
            agent=state.agent_name,
            agent_version=state.agent_version,
            principal=state.requested_by or None,
            region=served.region if served is not None else None,
            cache_hit=response.cache_hit,
            usage_missing=response.usage_missing,
            created_at=self.clock(),
        )
