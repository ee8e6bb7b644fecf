"""Identity rows: tenants, API keys, role grants and quotas."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Numeric, PrimaryKeyConstraint, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, JSONType, TenantMixin, utcnow

__all__ = [
    "ApiKeyRow",
    "LocalUserRow",
    "QuotaRow",
    "RoleGrantRow",
    "SessionCutoffRow",
    "SessionRevocationRow",
    "TenantRow",
]


class TenantRow(Base):
    """A tenant: a team whose objects no other tenant can see.

    The row is the tenant itself, so its ``id`` plays the part of ``tenant_id``.
    """

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Tenants are their own scope: the column keeps the invariant "every table has tenant_id".
    tenant_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    """``active`` or ``suspended``."""
    suspended_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(default=utcnow)


class ApiKeyRow(TenantMixin, Base):
    """An API key of a service account, an agent identity, a local user or the local admin.

    Only an HMAC-SHA256 digest of the secret is stored (keyed with the server's secret), so a
    copy of the database does not yield usable keys. Every key names the principal who created
    it and its accountable human, the person approvals count it as (DESIGN.md, "Tenancy and
    identity").
    """

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    """The ``key_id`` part of ``crl_<key_id>_<secret>``."""
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    """``service`` (a service account), ``agent`` (bound to one agent) or ``user``."""
    principal: Mapped[str] = mapped_column(String(200))
    """``service:ci-bot``, ``agent:repo-analyst`` or ``user:local-admin``."""
    agent_name: Mapped[str | None] = mapped_column(String(63))
    roles: Mapped[list[str]] = mapped_column(JSONType)
    digest: Mapped[str] = mapped_column(String(64))
    """Hex HMAC-SHA256 of ``{key_id}:{secret}``."""
    created_by: Mapped[str] = mapped_column(String(200))
    """The principal whose request created the key (``user:root``, ``service:ops-bot``,
    ``system`` for bootstrap keys)."""
    accountable: Mapped[str] = mapped_column(String(200))
    """The human the key acts for (``user:alice``): a personal key's own user; a service
    account's or agent key's creator's accountable human. Approvals count distinct ones."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(200))


class LocalUserRow(TenantMixin, Base):
    """A named person of the embedded mode, created by an admin (``corral users create``).

    Without an identity provider, a second approver needs an identity of their own: the user
    ``user:<name>`` holds personal keys (``corral keys create --user NAME``) that count as that
    person in approvals. With OIDC, users come from the identity provider instead.
    """

    __tablename__ = "local_users"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    """The user's name; the principal is ``user:<name>``."""
    display_name: Mapped[str] = mapped_column(String(200))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RoleGrantRow(TenantMixin, Base):
    """A role held in a tenant by a user, a group of users or a service account."""

    __tablename__ = "role_grants"
    __table_args__ = (UniqueConstraint("tenant_id", "subject", "role"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    """``user:alice@example.com``, ``group:platform-team`` or ``service:ci-bot``."""
    role: Mapped[str] = mapped_column(String(32))
    granted_by: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)


class QuotaRow(TenantMixin, Base):
    """One quota of a tenant; a quota without a row is unlimited.

    Names: ``runs_per_day``, ``concurrent_runs``, ``model_tokens_per_day``, ``cost_usd_per_day``.
    """

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    limit: Mapped[Decimal] = mapped_column(Numeric(20, 6))
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionRevocationRow(TenantMixin, Base):
    """A portal session ended server-side (logout): its cookie is refused until it expires.

    Kept only while the session could still be presented; expired rows are pruned on write.
    """

    __tablename__ = "session_revocations"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The random id in the session cookie (22 base64url characters)."""
    principal: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    """When the session would have expired anyway; the row is useless after it."""
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionCutoffRow(TenantMixin, Base):
    """Every portal session of a principal issued at or before ``not_before`` is ended.

    Written by "sign out everywhere" and an admin's sign-out of a principal: one row per
    principal instead of one per session.
    """

    __tablename__ = "session_cutoffs"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "principal"),)

    principal: Mapped[str] = mapped_column(String(200))
    not_before: Mapped[datetime]
    """Sessions issued at or before it (whole seconds, UTC) are refused."""
    set_by: Mapped[str] = mapped_column(String(200))
