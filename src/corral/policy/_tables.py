"""Policy rows: versioned Policy documents and every stored policy decision."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow
from corral.store import JSONType as JSONList

__all__ = ["PolicyDecisionRow", "PolicyRow", "PolicyVersionRow"]


class PolicyRow(TenantMixin, Base):
    """A Policy document's identity; its Cedar text lives in :class:`PolicyVersionRow`."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PolicyVersionRow(TenantMixin, Base):
    """One immutable version of a Policy document."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("policy_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    policy_id: Mapped[str] = mapped_column(ForeignKey("policies.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PolicyDecisionRow(TenantMixin, Base):
    """A stored policy decision, referenced from the audit event of the action it governed."""

    __tablename__ = "policy_decisions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    principal: Mapped[str] = mapped_column(String(300))
    resource: Mapped[str] = mapped_column(String(300))
    decision: Mapped[str] = mapped_column(String(20))
    """``allow``, ``deny`` or ``require_approval``."""
    determining_policies: Mapped[list[str]] = mapped_column(JSONList)
    reasons: Mapped[list[str]] = mapped_column(JSONList)
    approver_roles: Mapped[list[str]] = mapped_column(JSONList)
    required_approvals: Mapped[int] = mapped_column(Integer, default=0)
    constraints: Mapped[dict[str, Any]]
    errors: Mapped[list[str]] = mapped_column(JSONList)
    inputs_digest: Mapped[str] = mapped_column(String(71))
    policy_set_digest: Mapped[str] = mapped_column(String(71))
    duration_us: Mapped[float] = mapped_column(Float)
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
