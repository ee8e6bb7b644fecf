"""Local users and accountable humans.

Approvals count people, not credentials (DESIGN.md, "Tenancy and identity"). Every key records
its *accountable human*: a personal key (``user:<name>``) is accountable to its user; a service
account's key and an agent key to the accountable human of the principal that created it, so a
key minted by a key minted by ``user:root`` is still ``user:root``. OIDC users are their own.

In the embedded mode, without an identity provider, a second person is a *local user* an admin
creates (``corral users create NAME``, audited as ``user.created``) and gives a personal key
(``corral keys create --user NAME``). A local user is only as separate a person as the admin who
created them is honest: the audit log and ``corral keys list`` show who created each user and
each key.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import AuditRecord, append_events
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.store import SYSTEM, Store, new_id
from corral.tenancy._principal import Principal
from corral.tenancy._roles import PLATFORM_ADMIN
from corral.tenancy._tables import ApiKeyRow, LocalUserRow

__all__ = ["accountable_humans", "create_user", "list_users", "require_user"]

_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_RESERVED = frozenset({"local-admin", "system"})


async def create_user(
    store: Store, caller: Principal, *, name: str, display_name: str | None = None
) -> LocalUserRow:
    """Create the local user ``user:<name>`` in the caller's tenant, audited ``user.created``.

    Args:
        store: The store.
        caller: The admin creating the user (the audit event's actor).
        name: 1-100 letters, digits, ``.``, ``_``, ``@`` or ``-`` (``alice``,
            ``bob@example.com``); not ``local-admin`` or ``system``.
        display_name: Shown in listings; default ``name``.

    Returns:
        The new user.

    Raises:
        InvalidRequest: a malformed or reserved name.
        Conflict: the tenant has a user of that name.
    """
    if not _USER_NAME.match(name):
        raise InvalidRequest(
            f"User name {name!r} must be 1-100 letters, digits, '.', '_', '@' or '-', starting "
            "with a letter or digit."
        )
    if name in _RESERVED:
        raise InvalidRequest(f"User name {name!r} is reserved; pick another name.")
    row = LocalUserRow(
        id=new_id("user"),
        tenant_id=caller.tenant_id,
        name=name,
        display_name=display_name or name,
        created_by=caller.id,
    )
    record = AuditRecord(
        caller.id,
        "user.created",
        f"user:{name}",
        "success",
        details={"accountable_creator": caller.accountable},
    )
    try:
        async with store.transaction(caller.tenant_id) as session:
            session.add(row)
            await session.flush()
            await session.run_sync(
                lambda sync: append_events(sync.connection(), caller.tenant_id, [record])
            )
    except IntegrityError:
        raise Conflict(
            f"User {name!r} exists in tenant {caller.tenant_id!r}; give them a key with "
            f"`corral keys create --user {name} --role ROLE`."
        ) from None
    return row


async def list_users(store: Store, tenant_id: str) -> list[LocalUserRow]:
    """The tenant's local users, by name."""
    async with store.read(tenant_id) as session:
        return list(
            await session.scalars(
                select(LocalUserRow)
                .where(LocalUserRow.tenant_id == tenant_id)
                .order_by(LocalUserRow.name)
            )
        )


async def require_user(session: AsyncSession, tenant_id: str, name: str) -> None:
    """Raise :class:`NotFound` unless the tenant has the local user ``name``."""
    found = (
        await session.scalars(
            select(LocalUserRow.id).where(
                LocalUserRow.tenant_id == tenant_id, LocalUserRow.name == name
            )
        )
    ).first()
    if found is None:
        raise NotFound(
            f"Tenant {tenant_id!r} has no local user {name!r}; create it first with "
            f"`corral users create {name}`.",
            kind="user",
            name=name,
        )


def _accountable_of(connection: Connection, tenant_id: str, principal: str) -> set[str]:
    rows = connection.execute(
        select(ApiKeyRow.tenant_id, ApiKeyRow.roles, ApiKeyRow.accountable).where(
            ApiKeyRow.principal == principal
        )
    )
    # A key acts in its own tenant; a platform admin's key in any tenant.
    return {
        accountable
        for key_tenant, roles, accountable in rows
        if key_tenant == tenant_id or PLATFORM_ADMIN in (roles or ())
    }


async def accountable_humans(store: Store, tenant_id: str, principal: str) -> frozenset[str]:
    """Everyone accountable for what ``principal`` did in ``tenant_id``, itself included.

    For a principal acting through keys (``service:ci-bot``, ``agent:repo-analyst``,
    ``user:alice``), the accountable humans of every key carrying that principal in the tenant
    (revoked ones too) and of platform-admin keys carrying it in other tenants; an agent may
    have keys created by several people, and each of them counts. A principal without a key
    (an OIDC user) is accountable to itself.

    Returns:
        The principal and the accountable humans, e.g. ``{"service:ci-bot", "user:root"}``.
    """
    async with store.read(SYSTEM) as session:
        found = await session.run_sync(
            lambda sync: _accountable_of(sync.connection(), tenant_id, principal)
        )
    return frozenset({principal, *found})
