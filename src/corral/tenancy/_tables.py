"""Tenant rows."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store._base import Base, utcnow

__all__ = ["TenantRow"]


class TenantRow(Base):
    """A tenant: the unit of isolation. ``default`` exists from the first migration."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Tenants are their own scope: the column keeps the invariant "every table has tenant_id".
    tenant_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
