"""Tenant administration: the tenant's keys (revoke), its quotas, every tenant.

Each section needs the permission its REST twin requires; the tenants only for a platform admin.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from corral.portal._routes import router
from corral.portal._web import (
    PORTAL_PATH,
    platform_of,
    redirect,
    render,
    require,
    session_of,
)
from corral.tenancy import list_keys, list_tenants, revoke_key

__all__ = ["revoke", "tenancy"]


@router.get("/tenancy")
async def tenancy(request: Request) -> Response:
    """Keys (``keys.manage``, as ``GET /v1/keys``), quotas and tenants (their permissions)."""
    session = await session_of(request)
    require(session, "keys.manage")
    principal = session.principal
    platform = platform_of(request)
    context: dict[str, Any] = {
        "title": "Tenant",
        "keys": await list_keys(platform.store, principal.tenant_id),
        "quotas": (
            await platform.quotas.usage(principal.tenant_id)
            if principal.can("quotas.read")
            else None
        ),
        "tenants": (
            await list_tenants(platform.store) if principal.can("tenants.manage") else None
        ),
    }
    return render(request, "tenancy.html", context)


@router.post("/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> Response:
    """Revoke a key as ``DELETE /v1/keys/{id}`` does (``keys.manage``; never ``force``)."""
    session = await session_of(request)
    require(session, "keys.manage")
    platform = platform_of(request)
    await revoke_key(platform.store, session.principal, key_id)
    platform.identity.invalidate_key(key_id)
    return redirect(request, f"{PORTAL_PATH}/tenancy")
