"""Routes: ``/v1/audit``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from corral.api._deps import CallerDep, ReadSessionDep
from corral.api._schemas import AuditEventOut, AuditVerificationOut, Page
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow

__all__ = ["router"]

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/events", response_model=Page[AuditEventOut])
async def get_events(
    session: ReadSessionDep,
    caller: CallerDep,
    run_id: Annotated[str | None, Query(description="Only events of this run.")] = None,
    after: Annotated[int, Query(ge=0, description="Only events with a greater seq.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[AuditEventOut]:
    """Audit events in chain order, one page at a time (``next`` is the last seq)."""
    query = select(AuditEventRow).where(
        AuditEventRow.tenant_id == caller.tenant_id, AuditEventRow.seq > after
    )
    if run_id:
        query = query.where(AuditEventRow.run_id == run_id)
    rows = (await session.execute(query.order_by(AuditEventRow.seq).limit(limit))).scalars()
    items = [AuditEventOut.model_validate(r) for r in rows]
    return Page(items=items, next=str(items[-1].seq) if len(items) == limit else None)


@router.get("/verify", response_model=AuditVerificationOut)
async def get_verify(session: ReadSessionDep, caller: CallerDep) -> AuditVerificationOut:
    """Recompute the tenant's audit chain; ``ok`` is false at the first event that fails."""
    result = await verify_chain(session, tenant_id=caller.tenant_id)
    return AuditVerificationOut.model_validate(result.__dict__)
