"""Routes: ``/v1/slo``, the SLO objectives breached now in the caller's tenant."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from corral.api._deps import Caller, ReadSessionDep, requires
from corral.slo import active_breaches

__all__ = ["router"]

router = APIRouter(prefix="/v1/slo", tags=["slo"])


class SloBreachOut(BaseModel):
    """An agent's objective that is breached now."""

    model_config = ConfigDict(from_attributes=True)

    agent: str
    objective: str
    """``error_rate``, ``p95_latency_seconds`` or ``cost_usd_per_day``."""
    limit: str
    """The objective's limit, decimal text in its unit (a fraction, seconds, US dollars)."""
    observed: str
    """The value that breached it, decimal text in the same unit."""
    window_minutes: int
    """Minutes judged over (cost per day: minutes since 00:00 UTC)."""
    since: datetime
    """When the breach was recorded (UTC)."""


@router.get("/breaches", response_model=list[SloBreachOut])
async def get_breaches(
    session: ReadSessionDep, caller: Annotated[Caller, requires("agents.read")]
) -> list[SloBreachOut]:
    """Objectives of your tenant's agents that are breached now, by agent and objective."""
    breaches = await active_breaches(session, tenant_id=caller.tenant_id)
    return [SloBreachOut.model_validate(breach) for breach in breaches]
