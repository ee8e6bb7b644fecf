"""Approval rows: requests raised by ``require_approval`` decisions, and people's votes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, JSONType, TenantMixin, utcnow

__all__ = ["ApprovalRow", "ApprovalVoteRow"]


class ApprovalRow(TenantMixin, Base):
    """A request for people to approve one governed action.

    For a tool call it is bound to the run, step, call and the SHA-256 digest of the canonical
    arguments: only exactly that call may execute under it.
    """

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``tool_call`` or ``promotion``."""
    status: Mapped[str] = mapped_column(String(16), index=True)
    """``pending``, ``approved``, ``rejected``, ``expired`` or ``withdrawn`` (its run ended
    otherwise: cancelled or killed)."""
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(300))
    """``tool:git.commit`` or ``agent:repo-analyst@1.2.0->production``."""
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    step_index: Mapped[int | None] = mapped_column(Integer)
    call_index: Mapped[int | None] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(120))
    arguments_redacted: Mapped[dict[str, Any]]
    arguments_digest: Mapped[str] = mapped_column(String(71))
    reason: Mapped[str] = mapped_column(Text)
    approver_roles: Mapped[list[str]] = mapped_column(JSONType)
    required_approvals: Mapped[int] = mapped_column(Integer)
    policy_ids: Mapped[list[str]] = mapped_column(JSONType)
    """The approval-forbid policies this request lifts once approved."""
    policy_decision_id: Mapped[str] = mapped_column(String(40))
    requested_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]


class ApprovalVoteRow(TenantMixin, Base):
    """One person's decision on an approval request.

    One vote per principal and one per accountable human: a person holding several keys votes
    once.
    """

    __tablename__ = "approval_votes"
    __table_args__ = (
        UniqueConstraint("approval_id", "principal"),
        Index(
            "ix_approval_votes_approval_id_accountable", "approval_id", "accountable", unique=True
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    approval_id: Mapped[str] = mapped_column(ForeignKey("approvals.id"), index=True)
    principal: Mapped[str] = mapped_column(String(200))
    accountable: Mapped[str] = mapped_column(String(200))
    """The voter's accountable human (``user:alice``); the principal itself for a user."""
    role: Mapped[str] = mapped_column(String(64))
    vote: Mapped[str] = mapped_column(String(16))
    """``approve`` or ``reject``."""
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
