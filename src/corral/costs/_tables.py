"""Cost rows: one per model call (the ledger), and budget reservations of calls in flight."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, USDAmount, utcnow

__all__ = ["BudgetReservationRow", "ModelCallRow"]


class ModelCallRow(TenantMixin, Base):
    """One model call: who made it, which deployment answered, its tokens and its cost.

    Written with the step's checkpoint for managed runs, or in the caller's own transaction
    (the inbound OpenAI-compatible endpoint). Append-only.
    """

    __tablename__ = "model_calls"
    __table_args__ = (
        # Cost per day and agent (the portal overview) from the index alone.
        Index("ix_model_calls_tenant_day_cost", "tenant_id", "created_at", "agent", "cost_usd"),
        Index("ix_model_calls_tenant_agent_day", "tenant_id", "agent", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    """The run, or ``None`` for a call made outside a managed run (inbound endpoint)."""
    step: Mapped[int | None] = mapped_column(Integer)
    """The run's step index."""
    agent: Mapped[str | None] = mapped_column(String(63))
    agent_version: Mapped[str | None] = mapped_column(String(32))
    principal: Mapped[str | None] = mapped_column(String(200))
    """Who the call is accountable to (the run's requester, or the inbound caller)."""
    alias: Mapped[str] = mapped_column(String(200))
    """The model name the caller asked for (an alias, or ``provider/model``)."""
    deployment: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    region: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    """Every prompt token, cache reads and writes included."""
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    """Every generated token, reasoning included."""
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal | None] = mapped_column(USDAmount())
    """US dollars (exact; stored as picodollars). ``None``: the model has no price and no
    budget needed one (the call is counted, not costed)."""
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    """Answered from the response cache (cost 0)."""
    usage_missing: Mapped[bool] = mapped_column(Boolean, default=False)
    """The provider reported no usage: billed at the budget reservation and flagged."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BudgetReservationRow(TenantMixin, Base):
    """A model call in flight: its pessimistic cost, counted against the day's budgets.

    Inserted before the call (checked against the budgets in the same transaction) and deleted
    when the call is settled (its :class:`ModelCallRow` written), when its run pauses, or when
    its run's lease is reclaimed (the worker holding it died).
    """

    __tablename__ = "budget_reservations"
    __table_args__ = (Index("ix_budget_reservations_tenant_agent", "tenant_id", "agent"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(40), index=True)
    agent: Mapped[str | None] = mapped_column(String(63))
    amount_usd: Mapped[Decimal] = mapped_column(USDAmount())
    """The reserved estimate, US dollars."""
    holder: Mapped[str] = mapped_column(String(200))
    """Who holds it: ``worker:{id}`` for a run's call, the caller for an inbound call."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
