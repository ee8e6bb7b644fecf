"""The last way back in: refuse a change that would lock every platform admin out for good.

Only a platform admin can resume a tenant or mint a platform-admin key, and ``platform-admin``
lives on API keys only. A change that leaves no working platform-admin key (unrevoked,
unexpired, in an active tenant) can therefore never be undone through Corral: suspending the
tenant that holds the last ones, or revoking the last one. Such a change needs ``force``.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.errors import Conflict
from corral.store import utcnow
from corral.tenancy._roles import PLATFORM_ADMIN
from corral.tenancy._tables import ApiKeyRow, TenantRow

__all__ = ["check_key_revocation", "check_tenant_suspension"]


async def _ways_in(session: AsyncSession) -> list[tuple[str, str, str]]:
    """Working platform-admin keys as ``(key id, principal, tenant id)``; needs a system scope."""
    rows = await session.execute(
        select(ApiKeyRow.id, ApiKeyRow.principal, ApiKeyRow.tenant_id, ApiKeyRow.roles)
        .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
        .where(
            ApiKeyRow.revoked_at.is_(None),
            or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > utcnow()),
            TenantRow.status == "active",
        )
    )
    return [(key, who, tenant) for key, who, tenant, roles in rows if PLATFORM_ADMIN in roles]


def _named(keys: list[tuple[str, str, str]]) -> str:
    shown = ", ".join(f"{key} ({principal})" for key, principal, _tenant in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


async def check_tenant_suspension(session: AsyncSession, tenant_id: str) -> None:
    """Refuse suspending ``tenant_id`` when it holds every working platform-admin key.

    Args:
        session: A system-scoped transaction (it reads every tenant's keys).
        tenant_id: The tenant about to be suspended.

    Raises:
        Conflict: (``last_way_in``) naming the keys it would lock out and how to proceed.
    """
    ways = await _ways_in(session)
    lost = [way for way in ways if way[2] == tenant_id]
    if not lost or len(lost) < len(ways):
        return
    raise Conflict(
        f"Suspending tenant {tenant_id!r} would lock every platform admin out for good: the "
        f"only working platform-admin keys, {_named(lost)}, belong to it, a suspended tenant's "
        "keys are refused, and only a platform admin can resume it. Create a platform-admin "
        "key in another tenant first, or force it (`corral tenants suspend "
        f'{tenant_id} --reason TEXT --force`, API: "force": true) to lock them out.',
        code="last_way_in",
    )


async def check_key_revocation(session: AsyncSession, key_id: str, tenant_id: str) -> None:
    """Refuse revoking ``key_id`` when it is the last working platform-admin key.

    Args:
        session: A system-scoped session (it reads every tenant's keys).
        key_id: The key about to be revoked.
        tenant_id: The caller's tenant; another tenant's key is left to the caller's 404.

    Raises:
        Conflict: (``last_way_in``) saying what it would lock out and how to proceed.
    """
    ways = await _ways_in(session)
    if [(way[0], way[2]) for way in ways] != [(key_id, tenant_id)]:
        return
    principal = ways[0][1]
    raise Conflict(
        f"Revoking key {key_id!r} ({principal}) would lock every platform admin out for good: "
        "it is the last working platform-admin key, and only a platform admin can create "
        "another or resume a tenant. Create another platform-admin key first (`corral keys "
        f"create --name NAME --role platform-admin`), or force it (`corral keys revoke {key_id} "
        "--force`, API: ?force=true) to lock them out.",
        code="last_way_in",
    )
