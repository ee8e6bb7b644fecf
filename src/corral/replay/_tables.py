"""Replay rows: which runs replay which recorded run, and how."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow

__all__ = ["ReplayRow"]


class ReplayRow(TenantMixin, Base):
    """A run that replays a recorded run (written in the replay run's creating transaction)."""

    __tablename__ = "run_replays"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """The new run."""
    source_run_id: Mapped[str] = mapped_column(String(40), index=True)
    """The recorded run it replays (same tenant)."""
    mode: Mapped[str] = mapped_column(String(16))
    """``exact`` (recorded model outputs and tool results) or ``what_if`` (another agent
    version's model, recorded tool results where a call matches)."""
    requested_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
