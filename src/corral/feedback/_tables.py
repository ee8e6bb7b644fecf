"""Feedback rows: people's ratings of runs' answers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow

__all__ = ["FeedbackRow"]


class FeedbackRow(TenantMixin, Base):
    """One rating of one run by one principal (a run may collect many)."""

    __tablename__ = "run_feedback"
    __table_args__ = (Index("ix_run_feedback_agent", "tenant_id", "agent_name", "agent_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(40), index=True)
    agent_name: Mapped[str] = mapped_column(String(63))
    """The rated run's agent (copied, so metrics per agent version need no join)."""
    agent_version: Mapped[str] = mapped_column(String(32))
    """The rated run's agent version."""
    score: Mapped[int] = mapped_column(Integer)
    """-1 (bad), 0 (neutral) or 1 (good)."""
    label: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    principal: Mapped[str] = mapped_column(String(200))
    """Who gave it (``user:alice``, ``sa:ci``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
