"""Reads for other packages: stored policy decisions and the applied Policy documents.

Used by the portal (run detail, Policies page) and ``GET /v1/policies``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.policy._tables import PolicyDecisionRow, PolicyRow, PolicyVersionRow

__all__ = ["applied_policies", "list_run_decisions"]


async def applied_policies(
    session: AsyncSession, *, tenant_id: str
) -> list[tuple[PolicyRow, PolicyVersionRow]]:
    """The tenant's applied Policy documents at their latest version, by name."""
    rows = await session.execute(
        select(PolicyRow, PolicyVersionRow)
        .join(PolicyVersionRow, PolicyVersionRow.policy_id == PolicyRow.id)
        .where(
            PolicyRow.tenant_id == tenant_id,
            PolicyVersionRow.version == PolicyRow.latest_version,
        )
        .order_by(PolicyRow.name)
    )
    return [(policy, version) for policy, version in rows]


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
