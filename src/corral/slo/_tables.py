"""SLO rows: each objective's last judged state, and the evaluator's lease."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow

__all__ = ["SloEvaluatorRow", "SloStateRow"]


class SloStateRow(TenantMixin, Base):
    """Whether one objective of one agent is breached, as last judged.

    A row exists once the objective was first breached; a transition (breach, recovery)
    updates it only if it still holds the state read, so an alert is recorded once.
    """

    __tablename__ = "slo_states"
    __table_args__ = (PrimaryKeyConstraint("tenant_id", "agent_name", "objective"),)

    agent_name: Mapped[str] = mapped_column(String(63))
    objective: Mapped[str] = mapped_column(String(32))
    """``error_rate``, ``p95_latency_seconds`` or ``cost_usd_per_day``."""
    breached: Mapped[bool] = mapped_column(Boolean)
    limit_value: Mapped[str] = mapped_column(String(64))
    """The objective's limit when last judged (decimal text, the objective's unit)."""
    observed_value: Mapped[str] = mapped_column(String(64))
    """The value observed at the last transition (decimal text, the objective's unit)."""
    window_minutes: Mapped[int] = mapped_column(Integer)
    """Minutes judged over (for cost per day: minutes since 00:00 UTC)."""
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    """When it last changed state (UTC)."""


class SloEvaluatorRow(Base):
    """Who judged SLOs last and when: the lease that lets one worker of N judge at a time."""

    __tablename__ = "slo_evaluator"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    """The worker id that judged last."""
    evaluated_at: Mapped[datetime]
    """When it started judging (UTC)."""
