"""Reads of stored policy decisions for other packages (the portal's run detail)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.policy._tables import PolicyDecisionRow

__all__ = ["list_run_decisions"]


async def list_run_decisions(
    session: AsyncSession, run_id: str, *, tenant_id: str, limit: int = 500
) -> list[PolicyDecisionRow]:
    """The policy decisions stored for run ``run_id``, oldest first (at most ``limit``).

    The caller has already read the run in ``tenant_id``; another tenant's decisions never match.
    """
    rows = await session.scalars(
        select(PolicyDecisionRow)
        .where(PolicyDecisionRow.run_id == run_id, PolicyDecisionRow.tenant_id == tenant_id)
        .order_by(PolicyDecisionRow.created_at, PolicyDecisionRow.id)
        .limit(limit)
    )
    return list(rows)
