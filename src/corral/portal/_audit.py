"""Audit: the tenant's events, newest first, with filters and paging; chain verification.

Reads the tenant's own chain as ``GET /v1/audit/events`` does (``audit.read``). Verifying
recomputes the whole chain (``GET /v1/audit/verify``, ``corral audit verify``), so it runs
when asked with the button, never on a page load.

A platform admin (role ``platform-admin``) also picks the tenant: its own (the default), any
other, or :data:`ALL_TENANTS`. Anyone else who sends ``tenant=`` naming another tenant is
refused (403): a tenant never reads another's events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Request
from sqlalchemy import Select, select
from starlette.responses import Response

from corral.audit import AuditEventRow, verify_chain
from corral.errors import Forbidden, InvalidRequest, NotFound
from corral.portal._routes import router
from corral.portal._session import PortalSession
from corral.portal._web import platform_of, render, require, session_of
from corral.store import SYSTEM
from corral.tenancy import PLATFORM_ADMIN, TenantRow, list_tenants

__all__ = ["ALL_TENANTS", "audit", "audit_verify"]

ALL_TENANTS: Final = "*all"
"""The ``tenant`` value of every tenant's events (not a tenant id: those have no ``*``)."""
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


async def _tenant_of(
    request: Request, session: PortalSession
) -> tuple[str | None, list[TenantRow] | None]:
    """The tenant whose events to show (``None``: every tenant); the choices of a platform admin.

    Raises:
        Forbidden: (``cross_tenant``) a principal who is no platform admin named another tenant.
        NotFound: a platform admin named a tenant that does not exist.
    """
    own = session.principal.tenant_id
    asked = request.query_params.get("tenant", "")
    if PLATFORM_ADMIN not in session.principal.roles:
        if asked not in ("", own):
            raise Forbidden(
                f"Tenant {asked[:64]!r} is not yours: the audit page shows the events of your "
                f"tenant {own!r}; only a platform admin picks another.",
                code="cross_tenant",
            )
        return own, None
    tenants = await list_tenants(platform_of(request).store)
    if asked in ("", own):
        return own, tenants
    if asked == ALL_TENANTS:
        return None, tenants
    if asked not in {tenant.id for tenant in tenants}:
        raise NotFound(
            f"Tenant {asked[:64]!r} does not exist; pick one from the list.",
            kind="tenant",
            name=asked[:64],
        )
    return asked, tenants


def _query(tenant_id: str | None, filters: dict[str, str], before: int | None) -> Select[Any]:
    query = select(AuditEventRow)
    if tenant_id is not None:
        query = query.where(AuditEventRow.tenant_id == tenant_id)
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
    tenant_id, tenants = await _tenant_of(request, session)
    params = request.query_params
    filters = {name: params.get(name, "").strip()[:200] for name in _FILTERS}
    before_text = params.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
    async with platform_of(request).store.read(tenant_id or SYSTEM) as db:
        events = list((await db.execute(_query(tenant_id, filters, before))).scalars())
    own = session.principal.tenant_id
    filters["tenant"] = "" if tenant_id == own else (tenant_id or ALL_TENANTS)
    context = {
        "title": "Audit",
        "events": events,
        "tenants": tenants,
        "all_tenants": ALL_TENANTS,
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
    """Recompute the tenant's chain, then show the events (``audit.read``).

    Raises:
        InvalidRequest: a platform admin chose every tenant (verify one chain at a time).
    """
    session = await session_of(request)
    require(session, "audit.read")
    tenant_id, _tenants = await _tenant_of(request, session)
    if tenant_id is None:
        raise InvalidRequest(
            "Each tenant has its own chain: pick one tenant, then verify it.",
            code="one_tenant",
        )
    async with platform_of(request).store.read(tenant_id) as db:
        result = await verify_chain(db, tenant_id=tenant_id)
    return await _page(request, result)
