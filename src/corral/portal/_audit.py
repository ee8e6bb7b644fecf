"""Audit: the tenant's events, newest first, with filters and paging; chain verification.

Reads the tenant's own chain as ``GET /v1/audit/events`` does (``audit.read``). Verifying
recomputes the whole chain (``GET /v1/audit/verify``, ``corral audit verify``), so it runs
when asked with the button, never on a page load.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Request
from sqlalchemy import Select, select
from starlette.responses import Response

from corral.audit import AuditEventRow, verify_chain
from corral.errors import InvalidRequest
from corral.portal._routes import router
from corral.portal._web import platform_of, render, require, session_of

__all__ = ["audit", "audit_verify"]

PAGE_SIZE: Final = 50
_FILTERS: Final = ("action", "actor", "run_id", "since", "until")


def _time(filters: dict[str, str], name: str) -> datetime | None:
    text = filters[name]
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{name} {text!r} is not a time: write ISO 8601, such as 2026-05-01T00:00 (UTC).",
            code="invalid_time",
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _query(tenant_id: str, filters: dict[str, str], before: int | None) -> Select[Any]:
    query = select(AuditEventRow).where(AuditEventRow.tenant_id == tenant_id)
    for name in ("action", "actor", "run_id"):
        if filters[name]:
            query = query.where(getattr(AuditEventRow, name) == filters[name])
    start, end = _time(filters, "since"), _time(filters, "until")
    if start is not None:
        query = query.where(AuditEventRow.occurred_at >= start)
    if end is not None:
        query = query.where(AuditEventRow.occurred_at < end)
    if before is not None:
        query = query.where(AuditEventRow.id < before)
    return query.order_by(AuditEventRow.id.desc()).limit(PAGE_SIZE)


async def _page(request: Request, verification: object | None) -> Response:
    session = await session_of(request)
    require(session, "audit.read")
    tenant_id = session.principal.tenant_id
    params = request.query_params
    filters = {name: params.get(name, "").strip()[:200] for name in _FILTERS}
    before_text = params.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
    async with platform_of(request).store.read(tenant_id) as db:
        events = list((await db.execute(_query(tenant_id, filters, before))).scalars())
    context = {
        "title": "Audit",
        "events": events,
        "filters": filters,
        "next_before": events[-1].id if len(events) == PAGE_SIZE else None,
        "verification": verification,
    }
    return render(request, "audit.html", context)


@router.get("/audit")
async def audit(request: Request) -> Response:
    """The tenant's audit events, newest first (permission ``audit.read``)."""
    return await _page(request, None)


@router.get("/audit/verify")
async def audit_verify(request: Request) -> Response:
    """Recompute the tenant's chain, then show the events (``audit.read``)."""
    session = await session_of(request)
    require(session, "audit.read")
    tenant_id = session.principal.tenant_id
    async with platform_of(request).store.read(tenant_id) as db:
        result = await verify_chain(db, tenant_id=tenant_id)
    return await _page(request, result)
