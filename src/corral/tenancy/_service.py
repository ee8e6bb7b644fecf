"""Tenant administration: tenants, API keys, role grants, quotas; each change audited.

Every function is one transaction that also appends its audit event (``tenant.created``,
``tenant.suspended``, ``key.created``, ``key.revoked``, ``role.granted``, ``role.revoked``,
``quota.set``) with the acting principal. A key created through the API also records one
``role.granted`` event per role it carries (subject the key's principal), so granting approval
roles to keys shows in the audit log like granting them to people.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import AuditRecord, append_events
from corral.errors import Conflict, Forbidden, InvalidRequest, NotFound
from corral.store import SYSTEM, Store, new_id, utcnow
from corral.tenancy._keys import generate_key, key_digest
from corral.tenancy._lockout import check_key_revocation, check_tenant_suspension
from corral.tenancy._principal import Principal
from corral.tenancy._roles import PLATFORM_ADMIN, ROLES, TENANT_ROLES
from corral.tenancy._tables import ApiKeyRow, QuotaRow, RoleGrantRow, TenantRow
from corral.tenancy._users import require_user

__all__ = [
    "QUOTA_NAMES",
    "CreatedKey",
    "TenantKillSwitch",
    "audit_identity_event",
    "create_key",
    "create_local_admin_key",
    "create_tenant",
    "grant_role",
    "issue_key",
    "list_grants",
    "list_keys",
    "list_quotas",
    "list_tenants",
    "revoke_key",
    "revoke_role",
    "set_quota",
    "set_tenant_status",
]

_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SUBJECT = re.compile(r"^(user|group|service):[^\s]{1,190}$")

QUOTA_NAMES = ("runs_per_day", "concurrent_runs", "model_tokens_per_day", "cost_usd_per_day")
"""Quota names; counts are whole numbers, ``cost_usd_per_day`` is US dollars."""


async def _audit(session: AsyncSession, tenant_id: str, record: AuditRecord) -> None:
    await session.run_sync(lambda sync: append_events(sync.connection(), tenant_id, [record]))


async def audit_identity_event(
    store: Store,
    tenant_id: str,
    *,
    actor: str,
    action: str,
    subject: str,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """Append one identity event to the tenant's audit chain in its own transaction."""
    record = AuditRecord(actor, action, subject, outcome, details=details or {})
    async with store.transaction(tenant_id) as session:
        await _audit(session, tenant_id, record)


# --- tenants --------------------------------------------------------------------------------------


async def create_tenant(
    store: Store, *, tenant_id: str, display_name: str | None, actor: str
) -> TenantRow:
    """Create a tenant (platform admins only; the route checks).

    Raises:
        InvalidRequest: ``tenant_id`` is not 2-63 lowercase letters, digits or dashes.
        Conflict: it exists.
    """
    if not _TENANT_ID.match(tenant_id):
        raise InvalidRequest(
            f"Tenant id {tenant_id!r} must be 2-63 lowercase letters, digits or dashes, "
            "starting with a letter or digit."
        )
    try:
        async with store.transaction(SYSTEM) as session:
            row = TenantRow(
                id=tenant_id,
                tenant_id=tenant_id,
                display_name=display_name or tenant_id,
                status="active",
                created_by=actor,
            )
            session.add(row)
            await session.flush()
            await _audit(
                session,
                tenant_id,
                AuditRecord(actor, "tenant.created", f"tenant:{tenant_id}", "success"),
            )
    except IntegrityError:
        raise Conflict(f"Tenant {tenant_id!r} already exists.") from None
    return row


async def list_tenants(store: Store) -> list[TenantRow]:
    """Every tenant, by id."""
    async with store.read(SYSTEM) as session:
        return list(await session.scalars(select(TenantRow).order_by(TenantRow.id)))


class TenantKillSwitch(Protocol):
    """Stops a suspended tenant's runs: the runtime's tenant kill switch.

    Both methods run on the suspension's connection, in its transaction. Tenancy sits below the
    runtime, so the caller passes it in (:data:`corral.runtime.TENANT_KILL_SWITCH`).
    """

    def engage(self, connection: Connection, *, tenant_id: str, reason: str, actor: str) -> None:
        """Engage the tenant's switch: its queued and paused runs end ``KILLED``."""
        ...

    def release(self, connection: Connection, *, tenant_id: str, actor: str) -> None:
        """Release the tenant's switch.

        Raises:
            NotFound: none is engaged.
        """
        ...


async def set_tenant_status(
    store: Store,
    *,
    tenant_id: str,
    suspended: bool,
    reason: str,
    actor: str,
    kill_switch: TenantKillSwitch,
    force: bool = False,
) -> TenantRow:
    """Suspend or resume a tenant.

    A suspended tenant's requests get 403 with ``reason``; suspension engages a tenant kill
    switch in the same transaction, so its queued and paused runs end ``KILLED`` at once and
    running ones at their next step. Resuming releases that switch.

    Args:
        store: The store.
        tenant_id: The tenant.
        suspended: Suspend (``True``) or resume it.
        reason: Why (required to suspend), shown to its callers.
        actor: Who does it, for the audit event.
        force: Suspend even when the tenant holds every working platform-admin key, which
            locks every platform admin out for good.
        kill_switch: Engages and releases the tenant's kill switch in this transaction (the
            runtime's :data:`corral.runtime.TENANT_KILL_SWITCH`).

    Raises:
        NotFound: no such tenant.
        InvalidRequest: suspending without a reason.
        Conflict: (``last_way_in``) the suspension would lock every platform admin out, and
            ``force`` is not set.
    """
    if suspended and not reason.strip():
        raise InvalidRequest("Suspending a tenant needs a reason (--reason TEXT).")
    async with store.transaction(SYSTEM) as session:
        row = await session.get(TenantRow, tenant_id, with_for_update=True)
        if row is None:
            raise NotFound(f"Tenant {tenant_id!r} does not exist.", kind="tenant", name=tenant_id)
        if suspended and not force and row.status == "active":
            await check_tenant_suspension(session, tenant_id)
        row.status = "suspended" if suspended else "active"
        row.suspended_reason = reason if suspended else None
        row.updated_at = utcnow()
        await session.flush()
        switch_reason = f"tenant suspended: {reason}"
        if suspended:
            await session.run_sync(
                lambda sync: kill_switch.engage(
                    sync.connection(), tenant_id=tenant_id, reason=switch_reason, actor=actor
                )
            )
        else:
            try:
                await session.run_sync(
                    lambda sync: kill_switch.release(
                        sync.connection(), tenant_id=tenant_id, actor=actor
                    )
                )
            except NotFound:
                pass  # released by hand already
        action = "tenant.suspended" if suspended else "tenant.resumed"
        details = {"reason": reason} if suspended else {}
        await _audit(
            session,
            tenant_id,
            AuditRecord(actor, action, f"tenant:{tenant_id}", "success", details=details),
        )
    return row


# --- API keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedKey:
    """A new API key: ``key`` is shown once and never stored."""

    row: ApiKeyRow
    key: str


def _check_grantable(caller: Principal, roles: list[str]) -> None:
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise InvalidRequest(
            f"Unknown role(s) {', '.join(map(repr, unknown))}; roles: {', '.join(ROLES)}."
        )
    if PLATFORM_ADMIN in roles and PLATFORM_ADMIN not in caller.roles:
        raise Forbidden("Only a platform admin can grant 'platform-admin'.")


async def _add_key(
    session: AsyncSession,
    server_secret: bytes,
    *,
    tenant_id: str,
    name: str,
    kind: str,
    principal: str,
    roles: list[str],
    actor: str,
    accountable: str,
    agent: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKeyRow, str]:
    """Insert a new key's row and its ``key.created`` event; returns the row and the key."""
    key_id, secret, key = generate_key()
    row = ApiKeyRow(
        id=key_id,
        tenant_id=tenant_id,
        name=name,
        kind=kind,
        principal=principal,
        agent_name=agent,
        roles=sorted(set(roles)),
        digest=key_digest(server_secret, key_id, secret),
        created_by=actor,
        accountable=accountable,
        expires_at=expires_at,
    )
    session.add(row)
    await session.flush()
    details: dict[str, Any] = {
        "key_id": key_id,
        "roles": row.roles,
        "kind": kind,
        "accountable": accountable,
    }
    if expires_at:
        details["expires_at"] = expires_at.isoformat()
    await _audit(
        session, tenant_id, AuditRecord(actor, "key.created", principal, "success", details=details)
    )
    return row, key


def _key_identity(
    caller: Principal, name: str, roles: list[str], agent: str | None, user: str | None
) -> tuple[str, str, list[str], str]:
    """``(kind, principal, roles, accountable)`` of a new key; refuses bad combinations."""
    if not _NAME.match(name):
        raise InvalidRequest(f"Key name {name!r} must be 1-100 letters, digits, '.', '_' or '-'.")
    if agent is not None:
        if roles:
            raise InvalidRequest("An agent key carries the role 'agent' only; drop --role.")
        if user is not None:
            raise InvalidRequest("A key is an agent's (--agent) or a user's (--user), not both.")
        return "agent", f"agent:{agent}", ["agent"], caller.accountable
    if not roles:
        raise InvalidRequest(
            f"Give the key at least one role (--role), one of {', '.join(TENANT_ROLES)}."
        )
    _check_grantable(caller, roles)
    if user is not None:
        return "user", f"user:{user}", roles, f"user:{user}"
    return "service", f"service:{name}", roles, caller.accountable


async def create_key(
    store: Store,
    caller: Principal,
    *,
    server_secret: bytes,
    name: str,
    roles: list[str],
    agent: str | None = None,
    user: str | None = None,
    expires_in: timedelta | None = None,
) -> CreatedKey:
    """Create an API key in the caller's tenant.

    Three kinds, each recording its creator (``created_by`` = the caller) and its accountable
    human, the person approvals count it as:

    * ``agent`` makes an agent identity: principal ``agent:<agent>``, role ``agent`` (Corral's
      gateways only; ``roles`` must be empty), accountable to the caller's accountable human;
    * ``user`` makes a personal key of the tenant's local user ``user:<user>`` with ``roles``,
      accountable to that user;
    * otherwise a service account ``service:<name>`` with ``roles``, accountable to the
      caller's accountable human (a service account counts as its creator).

    The key's roles are audited as ``role.granted`` events besides ``key.created``.

    Raises:
        InvalidRequest: a bad name, unknown role, roles for an agent key, both ``agent`` and
            ``user``, or no role at all.
        Forbidden: granting ``platform-admin`` without holding it.
        NotFound: ``user`` names no local user of the tenant (`corral users create`).
        Conflict: a key of that name exists in the tenant.
    """
    kind, principal, roles, accountable = _key_identity(caller, name, roles, agent, user)
    now = utcnow()
    try:
        async with store.transaction(caller.tenant_id) as session:
            if user is not None:
                await require_user(session, caller.tenant_id, user)
            row, key = await _add_key(
                session,
                server_secret,
                tenant_id=caller.tenant_id,
                name=name,
                kind=kind,
                principal=principal,
                roles=roles,
                actor=caller.id,
                accountable=accountable,
                agent=agent,
                expires_at=now + expires_in if expires_in else None,
            )
            for role in row.roles:
                details = {"role": role, "key_id": row.id, "accountable": accountable}
                await _audit(
                    session,
                    caller.tenant_id,
                    AuditRecord(caller.id, "role.granted", principal, "success", details=details),
                )
    except IntegrityError:
        raise Conflict(
            f"A key named {name!r} exists in tenant {caller.tenant_id!r}; revoke it or pick "
            "another name."
        ) from None
    return CreatedKey(row, key)


async def issue_key(
    store: Store,
    *,
    server_secret: bytes,
    tenant_id: str,
    principal: str,
    roles: list[str],
    name: str,
    kind: str = "user",
    actor: str = "system",
    accountable: str | None = None,
    replace: bool = True,
) -> str:
    """Issue a key for any principal, bypassing the API's checks (bootstrap and tests).

    ``corral up`` uses it for the local admin; the API's ``POST /v1/keys`` goes through
    :func:`create_key` instead. With ``replace``, an existing key of that name is deleted first.
    ``accountable`` defaults to ``principal`` itself: a bootstrap key is its own party.

    Returns:
        The key, ``crl_<key_id>_<secret>``.
    """
    async with store.transaction(tenant_id) as session:
        if replace:
            await session.execute(
                delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.name == name)
            )
        _row, key = await _add_key(
            session,
            server_secret,
            tenant_id=tenant_id,
            name=name,
            kind=kind,
            principal=principal,
            roles=roles,
            actor=actor,
            accountable=accountable or principal,
        )
    return key


async def create_local_admin_key(
    store: Store, *, server_secret: bytes, tenant_id: str = "default"
) -> str:
    """A new key for ``user:local-admin`` with every role (the embedded mode's admin)."""
    return await issue_key(
        store,
        server_secret=server_secret,
        tenant_id=tenant_id,
        principal="user:local-admin",
        roles=list(ROLES),
        name="local-admin",
    )


async def list_keys(store: Store, tenant_id: str) -> list[ApiKeyRow]:
    """The tenant's keys (never their secrets), newest first."""
    async with store.read(tenant_id) as session:
        return list(
            await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.tenant_id == tenant_id)
                .order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
            )
        )


async def revoke_key(
    store: Store, caller: Principal, key_id: str, *, force: bool = False
) -> ApiKeyRow:
    """Revoke a key of the caller's tenant; it stops working at once in this process.

    ``force`` revokes even the last working platform-admin key, which locks every platform
    admin out for good.

    Raises:
        NotFound: no such key in the tenant (another tenant's key is not found either).
        Conflict: it is revoked already, or (``last_way_in``) it is the last working
            platform-admin key and ``force`` is not set.
    """
    if not force:
        # Other tenants' keys count too: read them in a system scope, before the change.
        async with store.read(SYSTEM) as session:
            await check_key_revocation(session, key_id, caller.tenant_id)
    async with store.transaction(caller.tenant_id) as session:
        row = (
            await session.scalars(
                select(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.tenant_id == caller.tenant_id)
                .with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(f"API key {key_id!r} does not exist.", kind="key", name=key_id)
        if row.revoked_at is not None:
            raise Conflict(f"API key {key_id!r} was revoked at {row.revoked_at.isoformat()}.")
        row.revoked_at, row.revoked_by = utcnow(), caller.id
        await session.flush()
        await _audit(
            session,
            caller.tenant_id,
            AuditRecord(
                caller.id, "key.revoked", row.principal, "success", details={"key_id": key_id}
            ),
        )
    return row


# --- role grants ----------------------------------------------------------------------------------


async def grant_role(store: Store, caller: Principal, *, subject: str, role: str) -> RoleGrantRow:
    """Grant ``role`` in the caller's tenant to a user, group or service account.

    Raises:
        InvalidRequest: a malformed subject or unknown role.
        Forbidden: granting ``platform-admin`` (only by a platform admin, and it is global: it
            lives on keys, not grants).
        Conflict: the subject holds the role already.
    """
    if not _SUBJECT.match(subject):
        raise InvalidRequest(
            f"Subject {subject!r} must be `user:<id>`, `group:<name>` or `service:<name>`."
        )
    if role not in TENANT_ROLES:
        if role == PLATFORM_ADMIN:
            raise Forbidden("'platform-admin' is not a tenant role and cannot be granted here.")
        raise InvalidRequest(f"Unknown role {role!r}; roles: {', '.join(TENANT_ROLES)}.")
    row = RoleGrantRow(
        id=new_id("grant"),
        tenant_id=caller.tenant_id,
        subject=subject,
        role=role,
        granted_by=caller.id,
    )
    try:
        async with store.transaction(caller.tenant_id) as session:
            session.add(row)
            await session.flush()
            await _audit(
                session,
                caller.tenant_id,
                AuditRecord(caller.id, "role.granted", subject, "success", details={"role": role}),
            )
    except IntegrityError:
        raise Conflict(f"{subject} already holds {role!r}.") from None
    return row


async def revoke_role(store: Store, caller: Principal, *, subject: str, role: str) -> None:
    """Take ``role`` away from ``subject`` in the caller's tenant.

    Raises:
        NotFound: the subject does not hold it.
    """
    async with store.transaction(caller.tenant_id) as session:
        result = await session.execute(
            delete(RoleGrantRow).where(
                RoleGrantRow.tenant_id == caller.tenant_id,
                RoleGrantRow.subject == subject,
                RoleGrantRow.role == role,
            )
        )
        if not getattr(result, "rowcount", 0):
            raise NotFound(
                f"{subject} does not hold {role!r}.", kind="grant", name=f"{subject}:{role}"
            )
        await _audit(
            session,
            caller.tenant_id,
            AuditRecord(caller.id, "role.revoked", subject, "success", details={"role": role}),
        )


async def list_grants(store: Store, tenant_id: str) -> list[RoleGrantRow]:
    """The tenant's role grants, by subject."""
    async with store.read(tenant_id) as session:
        return list(
            await session.scalars(
                select(RoleGrantRow)
                .where(RoleGrantRow.tenant_id == tenant_id)
                .order_by(RoleGrantRow.subject, RoleGrantRow.role)
            )
        )


# --- quotas ---------------------------------------------------------------------------------------


async def set_quota(
    store: Store, caller: Principal, *, name: str, limit: str | None
) -> QuotaRow | None:
    """Set (or with ``limit=None`` remove) one of the caller's tenant's quotas.

    Raises:
        InvalidRequest: unknown quota, or a limit that is not a non-negative number (whole for
            counts).
    """
    if name not in QUOTA_NAMES:
        raise InvalidRequest(f"Unknown quota {name!r}; quotas: {', '.join(QUOTA_NAMES)}.")
    value = _parse_limit(name, limit) if limit is not None else None
    async with store.transaction(caller.tenant_id) as session:
        row = (
            await session.scalars(
                select(QuotaRow).where(
                    QuotaRow.tenant_id == caller.tenant_id, QuotaRow.name == name
                )
            )
        ).first()
        if value is None:
            if row is not None:
                await session.delete(row)
        elif row is None:
            row = QuotaRow(
                id=new_id("quota"),
                tenant_id=caller.tenant_id,
                name=name,
                limit=value,
                updated_by=caller.id,
            )
            session.add(row)
        else:
            row.limit, row.updated_by, row.updated_at = value, caller.id, utcnow()
        await session.flush()
        await _audit(
            session,
            caller.tenant_id,
            AuditRecord(
                caller.id,
                "quota.set",
                f"quota:{name}",
                "success",
                details={"limit": None if value is None else str(value)},
            ),
        )
    return row if value is not None else None


def _parse_limit(name: str, limit: str) -> Decimal:
    try:
        value = Decimal(limit)
    except InvalidOperation:
        raise InvalidRequest(f"Quota {name!r} limit {limit!r} is not a number.") from None
    if not value.is_finite() or value < 0:
        raise InvalidRequest(f"Quota {name!r} limit must be a non-negative number.")
    if name != "cost_usd_per_day" and value != value.to_integral_value():
        raise InvalidRequest(f"Quota {name!r} counts whole units; {limit!r} is not whole.")
    return value


async def list_quotas(store: Store, tenant_id: str) -> dict[str, Decimal]:
    """The tenant's quotas by name (unset ones are unlimited and absent)."""
    async with store.read(tenant_id) as session:
        rows = await session.execute(
            select(QuotaRow.name, QuotaRow.limit).where(QuotaRow.tenant_id == tenant_id)
        )
        return {name: Decimal(limit) for name, limit in rows}
