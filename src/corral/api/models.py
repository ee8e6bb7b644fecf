"""Routes: ``/v1/model-aliases`` (the model aliases a tenant can use, and a test call).

``Model`` documents are applied with ``POST /v1/apply`` like every contract; an alias the
tenant does not define comes from the platform's default set (``source: platform``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import Page
from corral.contracts import ModelSpec
from corral.errors import NotFound
from corral.gateway.models import FinalAnswer, deployments_of
from corral.resilience import BreakerState

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])


class DeploymentOut(BaseModel):
    """One deployment of an alias, with its breaker's state in this process."""

    name: str = Field(description="`alias#index`.")
    provider: str
    model: str
    region: str | None
    weight: int
    base_url: str | None
    api_key: str | None = Field(description="The `${secret:NAME}` reference, never the value.")
    max_retries: int
    timeout_seconds: float | None
    breaker: BreakerState


class ModelAliasOut(BaseModel):
    """A model alias and its ordered deployments."""

    name: str
    source: Literal["tenant", "platform"] = Field(
        description="`tenant`: the tenant's Model document; `platform`: the default set."
    )
    description: str
    deployments: list[DeploymentOut]


class AttemptOut(BaseModel):
    """A deployment tried or skipped before the one that answered."""

    deployment: str
    region: str | None
    outcome: str = Field(description="`failed`, `denied`, `circuit_open` or `outside_residency`.")
    error: str


class ModelTestOut(BaseModel):
    """What one test call did."""

    alias: str
    deployment: str
    model: str = Field(description="`provider/model` of the deployment that answered.")
    region: str | None
    latency_ms: float = Field(description="Milliseconds for the gateway call, retries included.")
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None = Field(description="US dollars, when the call was priced.")
    answer: str = Field(description="The model's final answer, else its raw reply.")
    attempts: list[AttemptOut]
    trace_id: str = Field(
        description="The call's trace: its `chat` span and policy decisions are stored under it."
    )


def _alias_out(platform: PlatformDep, name: str, spec: ModelSpec, source: str) -> ModelAliasOut:
    breakers = platform.models.breakers
    return ModelAliasOut(
        name=name,
        source="tenant" if source == "tenant" else "platform",
        description=spec.description,
        deployments=[
            DeploymentOut(
                name=d.name,
                provider=d.provider,
                model=d.model,
                region=d.region,
                weight=d.weight,
                base_url=d.base_url,
                api_key=d.api_key,
                max_retries=d.max_retries,
                timeout_seconds=d.timeout_seconds,
                breaker=breakers.state(d.breaker_key),
            )
            for d in deployments_of(name, spec)
        ],
    )


@router.get("/model-aliases", response_model=Page[ModelAliasOut])
async def get_model_aliases(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("agents.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[ModelAliasOut]:
    """The aliases the tenant can use, by name: its Model documents and the platform defaults."""
    aliases = await platform.model_catalog.aliases(caller.tenant_id)
    names = [n for n in aliases if after is None or n > after][:limit]
    items = [_alias_out(platform, n, *aliases[n]) for n in names]
    return Page(items=items, next=names[-1] if len(names) == limit else None)


@router.get("/model-aliases/{alias}", response_model=ModelAliasOut)
async def get_model_alias(
    alias: str, platform: PlatformDep, caller: Annotated[Caller, requires("agents.read")]
) -> ModelAliasOut:
    """One alias and its deployments; 404 naming the known aliases."""
    aliases = await platform.model_catalog.aliases(caller.tenant_id)
    if alias not in aliases:
        known = list(aliases)
        raise NotFound(
            f"model alias {alias!r} is not defined; known aliases: {', '.join(known)}. "
            f"Apply a Model document named {alias!r}.",
            kind="model_alias",
            name=alias,
            known=known,
        )
    return _alias_out(platform, alias, *aliases[alias])


@router.post("/model-aliases/{alias}/test", response_model=ModelTestOut)
async def post_model_alias_test(
    alias: str, platform: PlatformDep, caller: Annotated[Caller, requires("runs.create")]
) -> ModelTestOut:
    """Make one small call to the alias (``model.call`` decided per deployment, as the caller).

    404 for an unknown alias; 502 when no deployment answered; 403 when policy refused all.
    """
    result = await platform.test_model(
        alias, tenant_id=caller.tenant_id, principal=caller.id, roles=caller.roles
    )
    response, served = result.response, result.response.served
    assert served is not None  # the gateway sets it on every response
    return ModelTestOut(
        alias=alias,
        deployment=served.deployment,
        model=result.model,
        region=served.region,
        latency_ms=round(result.latency_ms, 3),
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
        cost_usd=response.cost_usd,
        answer=(
            response.decision.text if isinstance(response.decision, FinalAnswer) else response.raw
        ),
        attempts=[
            AttemptOut(
                deployment=a.served.deployment,
                region=a.served.region,
                outcome=a.outcome,
                error=a.error,
            )
            for a in response.attempts
        ],
        trace_id=result.trace_id,
    )
