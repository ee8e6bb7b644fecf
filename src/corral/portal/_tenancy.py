"""Tenant administration: the tenant's keys (revoke), its quotas, every tenant.

Each section needs the permission its REST twin requires; the tenants only for a platform admin.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import Request
from starlette.responses import Response

from corral.errors import InvalidRequest
from corral.portal._routes import router
from corral.portal._session import SESSION_SECONDS
from corral.portal._web import (
    PORTAL_PATH,
    form_of,
    platform_of,
    redirect,
    render,
    require,
    session_of,
)
from corral.tenancy import end_sessions_of, list_keys, list_tenants, revoke_key

__all__ = ["revoke", "sign_out", "tenancy"]


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


@router.post("/tenancy/sign-out")
async def sign_out(request: Request) -> Response:
    """End every portal session of a principal of the tenant (``keys.manage``; audited)."""
    session = await session_of(request)
    require(session, "keys.manage")
    principal = (await form_of(request)).get("principal", "").strip()
    if not principal or len(principal) > 200:
        raise InvalidRequest(
            "Name the principal to sign out, such as user:alice or service:ci-bot.",
            code="invalid_principal",
        )
    await end_sessions_of(
        platform_of(request).store,
        session.principal,
        principal,
        max_session=timedelta(seconds=SESSION_SECONDS),
    )
    return redirect(request, f"{PORTAL_PATH}/tenancy")
