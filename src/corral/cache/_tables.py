"""Cache rows: model responses and tool results, each under its tenant and key digest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, utcnow

__all__ = ["ModelResponseCacheRow", "ToolResultCacheRow"]


class ModelResponseCacheRow(TenantMixin, Base):
    """One cached model response (``corral.gateway.models.response_document``).

    Rows past ``expires_at`` are never served; they are deleted when the tenant next stores
    an entry. The tenant is both part of ``digest`` and a key column.
    """

    __tablename__ = "model_response_cache"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "digest"),
        Index("ix_model_response_cache_expiry", "tenant_id", "expires_at"),
    )

    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 hex of the canonical request (``corral.gateway.models.response_cache_digest``)."""
    response: Mapped[dict[str, Any]]
    """The answering model's name and its response, as a JSON object."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    """When the entry stops being served (``created_at`` plus the time to live)."""


class ToolResultCacheRow(TenantMixin, Base):
    """One cached result of a read-only tool (``corral.gateway.tools.result_document``).

    Rows past ``expires_at`` are never served; they are deleted when the tenant next stores
    an entry. The tenant is both part of ``digest`` and a key column.
    """

    __tablename__ = "tool_result_cache"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "digest"),
        Index("ix_tool_result_cache_expiry", "tenant_id", "expires_at"),
    )

    digest: Mapped[str] = mapped_column(String(64))
    """SHA-256 hex of the call's key (``corral.gateway.tools.tool_cache_digest``)."""
    tool: Mapped[str] = mapped_column(String(200))
    """The tool's name (for people reading the table; the key covers it)."""
    result: Mapped[dict[str, Any]]
    """The tool's ``COMPLETED`` result, as a JSON object."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    """When the entry stops being served (``created_at`` plus the time to live)."""
