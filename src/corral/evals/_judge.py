"""The model-as-judge through Corral's model gateway."""

from __future__ import annotations

from decimal import Decimal

from corral.evals._graders import Judge, JudgeReply
from corral.gateway.models import FinalAnswer, Message, ModelGateway, ModelRequest

__all__ = ["gateway_judge"]

_SYSTEM = (
    "You are a strict grader. Answer with one JSON object and nothing else: "
    '{"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)


def gateway_judge(models: ModelGateway, tenant_id: str) -> Judge:
    """A :data:`~corral.evals.Judge` calling ``models`` as ``tenant_id`` (its aliases apply).

    Deterministic (temperature 0); the reply is the final answer's text, else the raw output;
    its cost is the gateway's price of the call (0 when unpriced).
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
        return JudgeReply(text, response.cost_usd or Decimal(0))

    return judge
