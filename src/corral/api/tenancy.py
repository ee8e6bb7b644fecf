"""Routes: tenants (platform admins), local users, API keys, role grants, quotas, ``whoami``.

Every change is one transaction with its audit event, the acting principal as actor.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import Page
from corral.runtime import TENANT_KILL_SWITCH
from corral.tenancy import (
    QUOTA_NAMES,
    ROLES,
    create_key,
    create_tenant,
    create_user,
    grant_role,
    list_grants,
    list_keys,
    list_tenants,
    list_users,
    revoke_key,
    revoke_role,
    set_quota,
    set_tenant_status,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["identity"])


Role = Literal["viewer", "builder", "operator", "approver", "admin", "platform-admin"]
"""A role name (``corral.tenancy.ROLES``)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantCreate(_Body):
    """A new tenant."""

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{1,62}$",
        description="2-63 lowercase letters, digits or dashes.",
    )
    display_name: str | None = Field(None, max_length=200)


class TenantSuspend(_Body):
    """Why a tenant is suspended (shown to its callers)."""

    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S")
    force: bool = Field(
        False,
        description="Suspend even a tenant holding every working platform-admin key, which "
        "locks every platform admin out for good (otherwise 409 `last_way_in`).",
    )


class TenantOut(BaseModel):
    """A tenant."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    display_name: str
    status: str
    suspended_reason: str | None
    created_by: str
    created_at: datetime


class UserCreate(_Body):
    """A new local user (embedded mode): a person who approves with personal keys."""

    name: str = Field(min_length=1, max_length=100, description="The principal is `user:<name>`.")
    display_name: str | None = Field(None, max_length=200)


class UserOut(BaseModel):
    """A local user."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    display_name: str
    created_by: str
    created_at: datetime


class KeyCreate(_Body):
    """A new API key: a service account's, a local user's (``user``) or an agent's (``agent``).

    Service and personal keys need ``roles``; an agent key takes none.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [  # what create_key enforces (400 otherwise)
                {"required": ["roles"], "properties": {"roles": {"minItems": 1}}},
                {"required": ["agent"], "properties": {"agent": {"type": "string"}}},
            ],
            "not": {
                "required": ["agent", "roles"],
                "properties": {"agent": {"type": "string"}, "roles": {"minItems": 1}},
            },
        },
    )

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    roles: list[Role] = Field(
        default_factory=list,
        max_length=len(ROLES),
        description="At least one for a service account; none for an agent key.",
    )
    agent: str | None = Field(None, description="Bind the key to this agent (an agent identity).")
    user: str | None = Field(
        None,
        description="A personal key of this local user (`user:<user>`, accountable to them).",
    )
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class KeyOut(BaseModel):
    """An API key's metadata (never its secret)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: str
    principal: str
    agent_name: str | None
    roles: list[str]
    created_by: str
    """The principal that created the key."""
    accountable: str
    """The human the key acts for; approvals count it as this person."""
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    """A new key; ``key`` is shown this once and cannot be recovered."""

    key: str


class GrantBody(_Body):
    """A role for a subject in the caller's tenant."""

    subject: str = Field(
        pattern=r"^(user|group|service):\S{1,190}$",
        description="`user:<id>`, `group:<name>` or `service:<name>`.",
    )
    role: Role


class GrantOut(BaseModel):
    """A role grant."""

    model_config = ConfigDict(from_attributes=True)

    subject: str
    role: str
    granted_by: str
    granted_at: datetime


_LIMIT_TEXT = re.compile(r"^[0-9]{1,18}(\.[0-9]{1,6})?$")
_LIMIT_MAX = 10**18 - 1
"""The largest limit: 18 digits, so sums and 6-decimal money stay exact (28-digit Decimal)."""


def _limit_text(value: object) -> object:
    if isinstance(value, str) and not _LIMIT_TEXT.match(value):
        raise ValueError(
            f"must be a non-negative decimal number such as '12' or '2.50' ({value!r})"
        )
    return value


_Limit = Annotated[
    Decimal,
    BeforeValidator(_limit_text),
    Field(ge=0, le=_LIMIT_MAX),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": _LIMIT_MAX},
                {"type": "string", "pattern": _LIMIT_TEXT.pattern},
            ]
        }
    ),
]


class QuotaBody(_Body):
    """A quota's new limit; ``null`` removes it (unlimited)."""

    limit: _Limit | None = Field(
        description="Count (whole), or US dollars for cost_usd_per_day; a number or decimal text."
    )


class QuotaOut(BaseModel):
    """A quota with today's usage."""

    name: str
    limit: Decimal | None
    current: Decimal
    resets_at: datetime | None


class WhoAmI(BaseModel):
    """The caller as Corral sees it."""

    principal: str
    kind: str
    tenant_id: str
    roles: list[str]
    groups: list[str]
    agent: str | None
    accountable: str
    """The human the credentials act for (approvals count this person)."""


@router.get("/whoami", response_model=WhoAmI)
async def get_whoami(caller: Annotated[Caller, requires("identity.read")]) -> WhoAmI:
    """Who the credentials belong to, in which tenant, with which roles."""
    return WhoAmI(
        principal=caller.id,
        kind=caller.kind,
        tenant_id=caller.tenant_id,
        roles=sorted(caller.roles),
        groups=list(caller.groups),
        agent=caller.agent,
        accountable=caller.accountable,
    )


@router.post("/tenants", response_model=TenantOut, status_code=201)
async def post_tenant(
    body: TenantCreate, platform: PlatformDep, caller: Annotated[Caller, requires("tenants.manage")]
) -> TenantOut:
    """Create a tenant (platform admins). 409 if it exists."""
    row = await create_tenant(
        platform.store, tenant_id=body.id, display_name=body.display_name, actor=caller.id
    )
    await platform.register_builtin_tools(row.id)
    return TenantOut.model_validate(row)


@router.get("/tenants", response_model=Page[TenantOut])
async def get_tenants(
    platform: PlatformDep, _caller: Annotated[Caller, requires("tenants.manage")]
) -> Page[TenantOut]:
    """Every tenant (platform admins)."""
    return Page(items=[TenantOut.model_validate(t) for t in await list_tenants(platform.store)])


@router.post("/tenants/{tenant_id}/suspend", response_model=TenantOut)
async def post_suspend(
    tenant_id: str,
    body: TenantSuspend,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("tenants.manage")],
) -> TenantOut:
    """Suspend a tenant: its requests get 403 with ``reason``; its runs end ``KILLED``.

    409 (``last_way_in``) when the tenant holds every working platform-admin key, unless
    ``force``: no one could resume it.
    """
    row = await set_tenant_status(
        platform.store,
        tenant_id=tenant_id,
        suspended=True,
        reason=body.reason,
        actor=caller.id,
        kill_switch=TENANT_KILL_SWITCH,
        force=body.force,
    )
    platform.identity.invalidate_tenant(tenant_id)
    await platform.worker.check_signals()
    return TenantOut.model_validate(row)


@router.post("/tenants/{tenant_id}/resume", response_model=TenantOut)
async def post_resume(
    tenant_id: str, platform: PlatformDep, caller: Annotated[Caller, requires("tenants.manage")]
) -> TenantOut:
    """Resume a suspended tenant."""
    row = await set_tenant_status(
        platform.store,
        tenant_id=tenant_id,
        suspended=False,
        reason="",
        actor=caller.id,
        kill_switch=TENANT_KILL_SWITCH,
    )
    platform.identity.invalidate_tenant(tenant_id)
    return TenantOut.model_validate(row)


@router.post("/users", response_model=UserOut, status_code=201)
async def post_user(
    body: UserCreate, platform: PlatformDep, caller: Annotated[Caller, requires("users.manage")]
) -> UserOut:
    """Create a local user in the caller's tenant (audited ``user.created``). 409 if it exists.

    Give them a personal key with ``POST /v1/keys`` and ``user``; their votes count as them.
    """
    row = await create_user(platform.store, caller, name=body.name, display_name=body.display_name)
    return UserOut.model_validate(row)


@router.get("/users", response_model=Page[UserOut])
async def get_users(
    platform: PlatformDep, caller: Annotated[Caller, requires("users.read")]
) -> Page[UserOut]:
    """The tenant's local users, by name."""
    rows = await list_users(platform.store, caller.tenant_id)
    return Page(items=[UserOut.model_validate(r) for r in rows])


@router.post("/keys", response_model=KeyCreatedOut, status_code=201)
async def post_key(
    body: KeyCreate, platform: PlatformDep, caller: Annotated[Caller, requires("keys.manage")]
) -> KeyCreatedOut:
    """Create an API key in the caller's tenant; the response holds the key, shown once."""
    created = await create_key(
        platform.store,
        caller,
        server_secret=platform.identity.server_secret,
        name=body.name,
        roles=list(body.roles),
        agent=body.agent,
        user=body.user,
        expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
    )
    return KeyCreatedOut.model_validate(
        {**KeyOut.model_validate(created.row).model_dump(), "key": created.key}
    )


@router.get("/keys", response_model=Page[KeyOut])
async def get_keys(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("keys.manage")],
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> Page[KeyOut]:
    """The tenant's API keys, newest first (never their secrets)."""
    rows = await list_keys(platform.store, caller.tenant_id)
    return Page(
        items=[KeyOut.model_validate(r) for r in rows if include_revoked or not r.revoked_at]
    )


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def delete_key(
    key_id: str,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("keys.manage")],
    force: Annotated[
        bool,
        Query(
            description="Revoke even the last working platform-admin key, which locks every "
            "platform admin out for good (otherwise 409 `last_way_in`)."
        ),
    ] = False,
) -> KeyOut:
    """Revoke a key: it stops working at once. 404 if the tenant has no such key.

    409 (``last_way_in``) for the last working platform-admin key, unless ``force``.
    """
    row = await revoke_key(platform.store, caller, key_id, force=force)
    platform.identity.invalidate_key(key_id)
    return KeyOut.model_validate(row)


@router.get("/role-grants", response_model=Page[GrantOut])
async def get_grants(
    platform: PlatformDep, caller: Annotated[Caller, requires("members.manage")]
) -> Page[GrantOut]:
    """The tenant's role grants."""
    rows = await list_grants(platform.store, caller.tenant_id)
    return Page(items=[GrantOut.model_validate(r) for r in rows])


@router.post("/role-grants", response_model=GrantOut, status_code=201)
async def post_grant(
    body: GrantBody, platform: PlatformDep, caller: Annotated[Caller, requires("members.manage")]
) -> GrantOut:
    """Grant a role in the caller's tenant. 409 if held already."""
    row = await grant_role(platform.store, caller, subject=body.subject, role=body.role)
    platform.identity.invalidate_tenant(caller.tenant_id)
    return GrantOut.model_validate(row)


@router.post("/role-grants/revoke", status_code=204)
async def post_revoke_grant(
    body: GrantBody, platform: PlatformDep, caller: Annotated[Caller, requires("members.manage")]
) -> None:
    """Take a role away. 404 if the subject does not hold it."""
    await revoke_role(platform.store, caller, subject=body.subject, role=body.role)
    platform.identity.invalidate_tenant(caller.tenant_id)


@router.get("/quotas", response_model=list[QuotaOut])
async def get_quotas(
    platform: PlatformDep, caller: Annotated[Caller, requires("quotas.read")]
) -> list[QuotaOut]:
    """Every quota of the caller's tenant with today's value (UTC day)."""
    usage = await platform.quotas.usage(caller.tenant_id)
    return [
        QuotaOut(name=u.name, limit=u.limit, current=u.current, resets_at=u.resets_at)
        for u in usage
    ]


@router.put("/quotas/{name}", response_model=QuotaOut)
async def put_quota(
    name: Literal[QUOTA_NAMES],  # type: ignore[valid-type]
    body: QuotaBody,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("quotas.manage")],
) -> QuotaOut:
    """Set or remove one quota of the caller's tenant."""
    await set_quota(
        platform.store, caller, name=name, limit=None if body.limit is None else str(body.limit)
    )
    platform.quotas.invalidate(caller.tenant_id)
    usage = {u.name: u for u in await platform.quotas.usage(caller.tenant_id)}[name]
    return QuotaOut(name=name, limit=usage.limit, current=usage.current, resets_at=usage.resets_at)
