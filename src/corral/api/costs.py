"""Routes: ``/v1/costs``, the cost ledger grouped by agent, model, tenant or UTC day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import USDText, usd_text
from corral.costs import costs_report
from corral.tenancy import PLATFORM_ADMIN

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["costs"])

DEFAULT_WINDOW = timedelta(days=30)
"""How far back a report goes without ``since``."""


class CostGroupOut(BaseModel):
    """One line of a cost report."""

    key: str
    """The agent, ``provider/model``, tenant or UTC day (``YYYY-MM-DD``)."""
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost_usd: USDText
    """US dollars (decimal text)."""
    unpriced_calls: int
    """Calls of a model without a price (counted, not in ``cost_usd``)."""
    usage_missing_calls: int
    """Calls whose provider reported no usage (billed at their reservation)."""


class CostReportOut(BaseModel):
    """The cost ledger since a time, grouped."""

    by: str
    since: datetime
    tenant: str | None
    """The tenant reported on; ``None``: every tenant (platform admins, ``by=tenant``)."""
    total_cost_usd: USDText
    groups: list[CostGroupOut]
    """Most expensive first."""


def _iso_8601(value: object) -> object:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 time, e.g. 2026-05-01T00:00:00Z") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


@router.get("/costs", response_model=CostReportOut)
async def get_costs(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("runs.read")],
    by: Annotated[
        Literal["agent", "model", "tenant", "day"],
        Query(description="Group by agent, provider/model, tenant or UTC day."),
    ] = "agent",
    since: Annotated[
        datetime | None,
        BeforeValidator(_iso_8601),
        Query(description="From this ISO 8601 time on (default: 30 days ago)."),
    ] = None,
) -> CostReportOut:
    """Model-call costs of your tenant since a time, grouped.

    A platform admin asking ``by=tenant`` sees every tenant; everyone else sees their tenant's
    calls only.
    """
    start = since or datetime.now(UTC) - DEFAULT_WINDOW
    tenant = None if by == "tenant" and PLATFORM_ADMIN in caller.roles else caller.tenant_id
    groups = await costs_report(platform.store, by=by, since=start, tenant_id=tenant)
    return CostReportOut(
        by=by,
        since=start,
        tenant=tenant,
        total_cost_usd=usd_text(sum((g.cost_usd for g in groups), Decimal(0))),
        groups=[CostGroupOut.model_validate(g, from_attributes=True) for g in groups],
    )
