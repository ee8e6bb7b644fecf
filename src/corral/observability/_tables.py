"""Span rows: OpenTelemetry spans exported into the store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin

__all__ = ["SpanRow"]


class SpanRow(TenantMixin, Base):
    """One finished span (OpenTelemetry data model; GenAI semantic conventions)."""

    __tablename__ = "spans"

    span_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    """16 hex digits (W3C Trace Context)."""
    trace_id: Mapped[str] = mapped_column(String(32), index=True)
    """32 hex digits (W3C Trace Context)."""
    parent_span_id: Mapped[str | None] = mapped_column(String(16))
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8))
    """``UNSET``, ``OK`` or ``ERROR``."""
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    attributes: Mapped[dict[str, Any]]
