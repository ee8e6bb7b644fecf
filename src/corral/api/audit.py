"""Routes: ``/v1/audit``.

Chains are per tenant; platform-wide events (a platform kill switch) are in the chain of
tenant ``*``. A caller reads its own tenant's chain (the default) or the platform's; a platform
admin reads any tenant's (``?tenant=T`` works like ``X-Corral-Tenant: T``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BeforeValidator
from sqlalchemy import select

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import MAX_CURSOR, AuditEventOut, AuditVerificationOut, Page
from corral.audit import AuditEventRow, verify_chain
from corral.errors import NotFound, PolicyDenied
from corral.platform import Platform
from corral.store import SYSTEM
from corral.tenancy import PLATFORM_ADMIN, TenantRow

__all__ = ["router"]

router = APIRouter(prefix="/v1/audit", tags=["audit"])

PLATFORM_CHAIN = "*"
"""The tenant id of the chain that holds platform-wide events."""

_TenantQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Which chain: your tenant (the default) or '*' for the platform chain.",
    ),
]


async def _chain(platform: Platform, caller: Caller, tenant: str | None) -> str:
    """The tenant id of the chain the caller asked for.

    Raises:
        PolicyDenied: another tenant's chain, unless the caller is a platform admin (a tenant
            never reads another's data).
        NotFound: a platform admin named a tenant that does not exist.
    """
    if tenant is None or tenant in (caller.tenant_id, PLATFORM_CHAIN):
        return tenant or caller.tenant_id
    if PLATFORM_ADMIN in caller.roles:
        async with platform.store.read(SYSTEM) as session:
            if await session.get(TenantRow, tenant) is None:
                raise NotFound(
                    f"Tenant {tenant!r} does not exist; `corral tenants list` shows them.",
                    kind="tenant",
                    name=tenant,
                )
        return tenant
    raise PolicyDenied(
        f"Tenant {tenant!r} is not yours: read the audit chain of your tenant "
        f"{caller.tenant_id!r} (the default) or the platform chain {PLATFORM_CHAIN!r}.",
        code="cross_tenant",
    )


def _scope(caller: Caller, chain: str) -> str:
    """The store scope that reads ``chain`` (platform-wide rows are readable from any tenant)."""
    return caller.tenant_id if chain == PLATFORM_CHAIN else chain


def _iso_8601(value: object) -> object:
    """Only ISO 8601 text is a time here (pydantic would also take a number of seconds)."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 time, e.g. 2026-05-01T00:00:00Z") from None
    return value


_Instant = Annotated[datetime | None, BeforeValidator(_iso_8601)]


def _utc(value: datetime | None) -> datetime | None:
    """A time without an offset is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("/events", response_model=Page[AuditEventOut])
async def get_events(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("audit.read")],
    run_id: Annotated[str | None, Query(description="Only events of this run.")] = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_CURSOR, description="Only events with a greater seq.")
    ] = 0,
    since: Annotated[
        _Instant,
        Query(
            description="Only events that occurred at or after this ISO 8601 time (UTC "
            "when it has no offset)."
        ),
    ] = None,
    until: Annotated[
        _Instant,
        Query(
            description="Only events that occurred before this ISO 8601 time (UTC when "
            "it has no offset)."
        ),
    ] = None,
    tenant: _TenantQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[AuditEventOut]:
    """Audit events in chain order, one page at a time (``next`` is the last seq).

    Pass ``next`` back as ``after`` with the same filters for the next page; ``since`` and
    ``until`` select by ``occurred_at`` (``since`` inclusive, ``until`` exclusive).
    403 for another tenant's chain (unless the caller is a platform admin).
    """
    chain = await _chain(platform, caller, tenant)
    query = select(AuditEventRow).where(AuditEventRow.tenant_id == chain, AuditEventRow.seq > after)
    if run_id:
        query = query.where(AuditEventRow.run_id == run_id)
    start, end = _utc(since), _utc(until)
    if start is not None:
        query = query.where(AuditEventRow.occurred_at >= start)
    if end is not None:
        query = query.where(AuditEventRow.occurred_at < end)
    async with platform.store.read(_scope(caller, chain)) as session:
        rows = (await session.execute(query.order_by(AuditEventRow.seq).limit(limit))).scalars()
        items = [AuditEventOut.model_validate(r) for r in rows]
    return Page(items=items, next=str(items[-1].seq) if len(items) == limit else None)


@router.get("/verify", response_model=AuditVerificationOut)
async def get_verify(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("audit.read")],
    tenant: _TenantQuery = None,
) -> AuditVerificationOut:
    """Recompute an audit chain; ``ok`` is false at the first event that fails.

    403 for another tenant's chain (unless the caller is a platform admin).
    """
    chain = await _chain(platform, caller, tenant)
    async with platform.store.read(_scope(caller, chain)) as session:
        result = await verify_chain(session, tenant_id=chain)
    return AuditVerificationOut.model_validate(result.__dict__)
