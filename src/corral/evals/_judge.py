"""The model-as-judge through Corral's model gateway."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from corral.errors import ModelPriceUnknown
from corral.evals._graders import Judge, JudgeReply
from corral.gateway.models import (
    FinalAnswer,
    Message,
    ModelGateway,
    ModelRequest,
    ModelResponse,
    price_call,
    settings_override,
)

__all__ = ["gateway_judge"]

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
    models: ModelGateway, tenant_id: str, *, prices: Mapping[str, object] | None = None
) -> Judge:
    """A :data:`~corral.evals.Judge` calling ``models`` as ``tenant_id`` (its aliases apply).

    Deterministic (temperature 0); the reply is the final answer's text, else the raw output.

    Args:
        models: The model gateway.
        tenant_id: Whose ``Model`` aliases resolve the judge's model name.
        prices: ``settings.quotas.model_prices``, to price deployments without an override.
    """

    async def judge(model: str, prompt: str) -> JudgeReply:
        request = ModelRequest(
            model="",
            messages=[Message("system", _SYSTEM), Message("user", prompt)],
            temperature=0.0,
            max_answer_chars=2000,
        )
        _, response = await models.complete([model], request, tenant_id=tenant_id)
        decision = response.decision
        text = decision.text if isinstance(decision, FinalAnswer) else response.raw
        return JudgeReply(text, _cost(response, prices or {}))

    return judge
