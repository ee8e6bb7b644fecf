"""The model-as-judge through Corral's model gateway."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from corral.costs import ModelCall, insert_model_calls
from corral.errors import ModelPriceUnknown
from corral.evals._graders import Judge, JudgeReply
from corral.gateway.models import (
    FinalAnswer,
    Message,
    ModelGateway,
    ModelRequest,
    ModelResponse,
    Served,
    price_call,
    settings_override,
)
from corral.policy import (
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    decision_row,
    insert_decisions,
    principal_ref,
)
from corral.store import Store

__all__ = ["JUDGE_STAGE", "gateway_judge"]

JUDGE_STAGE = "eval"
"""The ``context.stage`` of a judge's ``model.call`` decisions."""

_SYSTEM = (
    "You are a strict grader. Answer with one JSON object and nothing else: "
    '{"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)


def _cost(response: ModelResponse, prices: Mapping[str, object]) -> Decimal:
    """The call's cost: the gateway's, else priced as the runtime prices a call.

    The deployment's price override, else the settings' (``quotas.model_prices``), else the
    price table; a model with no price at all counts 0.
    """
    if response.cost_usd is not None:
        return response.cost_usd
    served = response.served
    if served is None or response.cache_hit:
        return Decimal(0)
    override = served.price or settings_override(prices, served.provider, served.model)
    try:
        return price_call(served.provider, served.model, response.usage, override)
    except ModelPriceUnknown:
        return Decimal(0)


def gateway_judge(
    models: ModelGateway,
    tenant_id: str,
    *,
    governance: Governance,
    store: Store,
    principal: str,
    roles: Iterable[str] | None = None,
    prices: Mapping[str, object] | None = None,
) -> Judge:
    """A :data:`~corral.evals.Judge` calling ``models`` as ``principal`` in ``tenant_id``.

    Every call is a governed ``model.call``: each deployment is decided by policy before it is
    called (principal ``principal``, resource ``Model::"provider/model"``, context stage
    ``eval``), the decisions are stored, and the answered call is written to the cost ledger
    (``model_calls``), where it counts against the tenant's daily budget like any other call.
    Deterministic (temperature 0); the reply is the final answer's text, else the raw output.

    Args:
        models: The model gateway.
        tenant_id: Whose ``Model`` aliases resolve the judge's model name.
        governance: Decides ``model.call``.
        store: Where the decisions and the ledger row are written.
        principal: Who the judge's calls are accountable to (who grades: ``user:alice``).
        roles: The principal's roles in the tenant (Cedar ``principal.roles``).
        prices: ``settings.quotas.model_prices``, to price deployments without an override.

    Raises:
        PolicyDenied: (from the judge) policy refused every deployment of the judge's model.
    """
    caller = governance.principal_entity(principal, tenant_id, roles=roles)

    async def judge(alias: str, prompt: str) -> JudgeReply:
        authorize = _Authorizer(governance, tenant_id, principal, caller)
        request = ModelRequest(
            model="",
            messages=[Message("system", _SYSTEM), Message("user", prompt)],
            temperature=0.0,
            max_answer_chars=2000,
        )
        response: ModelResponse | None = None
        try:
            _, response = await models.complete(
                [alias], request, authorize=authorize, tenant_id=tenant_id
            )
        finally:
            cost = None if response is None else _cost(response, prices or {})
            calls = _ledger_rows(tenant_id, principal, alias, response, cost)
            rows = authorize.rows
            if rows or calls:  # the decisions and the ledger row, in one transaction
                await store.run_sync(functools.partial(_record, rows=rows, calls=calls), tenant_id)
        decision = response.decision
        text = decision.text if isinstance(decision, FinalAnswer) else response.raw
        return JudgeReply(text, cost or Decimal(0))

    return judge


class _Authorizer:
    """Decides ``model.call`` for each deployment the judge's call tries; keeps the rows."""

    def __init__(
        self, governance: Governance, tenant_id: str, principal: str, caller: Entity
    ) -> None:
        self.governance, self.tenant_id, self.principal = governance, tenant_id, principal
        self.caller = caller
        self.rows: list[dict[str, Any]] = []

    async def __call__(self, model: str, served: Served | None = None) -> str | None:
        """``None`` when policy allows calling ``model`` (``provider/model``), else why not."""
        provider, _, name = model.partition("/")
        request = PolicyRequest(
            principal=principal_ref(self.principal),
            action="model.call",
            resource=EntityRef("Model", model),
            context=PolicyContext(
                tenant=self.tenant_id,
                stage=JUDGE_STAGE,
                requester=self.principal,
                region=None if served is None else served.region,
                deployment=None if served is None else served.deployment,
            ),
        )
        entity = Entity(EntityRef("Model", model), {"provider": provider, "name": name})
        decision = await self.governance.decide(self.tenant_id, request, [self.caller, entity])
        self.rows.append(decision_row(decision, request, tenant_id=self.tenant_id, run_id=None))
        if decision.decision == "allow":
            return None
        because = "; ".join(decision.reasons) or "no policy permits it"
        return (
            f"policy does not allow the judge model {model!r} for {self.principal!r}: "
            f"{because} (decision {decision.id})"
        )


def _record(connection: Connection, *, rows: list[dict[str, Any]], calls: list[ModelCall]) -> None:
    insert_decisions(connection, rows)
    insert_model_calls(connection, calls)


def _ledger_rows(
    tenant_id: str,
    principal: str,
    alias: str,
    response: ModelResponse | None,
    cost: Decimal | None,
) -> list[ModelCall]:
    """The judge's call for the cost ledger (one ``model_calls`` row; none if unanswered)."""
    if response is None or response.served is None:
        return []
    served = response.served
    return [
        ModelCall(
            tenant_id=tenant_id,
            alias=alias,
            deployment=served.deployment,
            provider=served.provider,
            model=served.model,
            usage=response.usage,
            cost_usd=cost,
            principal=principal,
            region=served.region,
            cache_hit=response.cache_hit,
        )
    ]
