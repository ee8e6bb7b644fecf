"""Runtime rows: runs (with their lease), append-only steps and tool calls."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from corral.runtime._status import RunStatus, StepKind, ToolCallStatus
from corral.store import Base, TenantMixin, USDAmount, utcnow

__all__ = ["KillSwitchRow", "RunEventRow", "RunRow", "StepRow", "ToolCallRow"]


def _status_column(enum: type[StrEnum], length: int) -> Enum:
    """A ``VARCHAR(length)`` holding ``enum``'s values, read back as members.

    No CHECK constraint and no native enum type: the columns stay what the migrations made
    (plain strings), so adding a member needs no migration.
    """
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
    )


class RunRow(TenantMixin, Base):
    """A run: its status, budgets used and lease. Small; large payloads live in steps."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_claim", "status", "lease_expires_at"),
        # The portal overview and the SLO evaluator scan a tenant's runs by these times; the
        # overview's counts and latencies read status and finished_at from the index alone.
        Index("ix_runs_tenant_created_status", "tenant_id", "created_at", "status", "finished_at"),
        Index("ix_runs_tenant_finished", "tenant_id", "finished_at"),
        Index("ix_runs_tenant_status", "tenant_id", "status"),  # the runs running now
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    agent_name: Mapped[str] = mapped_column(String(63))
    agent_version_id: Mapped[str] = mapped_column(ForeignKey("agent_versions.id"))
    agent_version: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(32), default="dev")
    status: Mapped[RunStatus] = mapped_column(_status_column(RunStatus, 24), index=True)
    task: Mapped[str] = mapped_column(Text)
    workspace: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    replay_of: Mapped[str | None] = mapped_column(String(40))
    """The recorded run this run replays (``corral runs replay``), or ``None``: loaded with the
    run, so the tool gateway's replay interceptor never reads the store for other runs."""
    session_id: Mapped[str | None] = mapped_column(String(128))
    """The caller's session this run belongs to (1-128 of ``A-Za-z0-9._:-``), or ``None``:
    an experiment keyed by session gives the runs of one session the same variant."""
    output: Mapped[str | None] = mapped_column(Text)
    terminal_reason: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    step_count: Mapped[int] = mapped_column(Integer, default=0)
    """Checkpointed steps; the next step has this index."""
    iterations: Mapped[int] = mapped_column(Integer, default=0)
    tool_call_count: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(
        USDAmount(), default=Decimal(0), server_default=text("0")
    )
    """The run's model calls so far, US dollars (the sum of its ``model_calls`` rows)."""
    trace_id: Mapped[str] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    """Why a paused run (``AWAITING_APPROVAL``, ``IN_DOUBT``) waits, for a person."""
    resume_condition: Mapped[dict[str, Any] | None]
    """What resumes it (``{"kind": "in_doubt", "idempotency_key": ...}``...)."""
    pending_decision: Mapped[dict[str, Any] | None]
    """The decision of the step in progress once a side-effecting tool call started: a
    recovering worker continues it instead of asking the model again."""
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Claims of this run so far: the fencing token of the current lease. Every claim
    increments it; every write a worker makes for the run is conditioned on the epoch it
    claimed (a worker fenced out this way raises :class:`~corral.errors.LeaseLost`)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StepRow(TenantMixin, Base):
    """One checkpointed iteration of the loop: the model's decision and its outcome."""

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[StepKind] = mapped_column(_status_column(StepKind, 24))
    """``tool_calls``, ``final_answer``, ``invalid_decision`` or ``model_error``."""
    model: Mapped[str] = mapped_column(String(200))
    decision: Mapped[dict[str, Any]]
    """The parsed decision, or ``{"raw": ..., "error": ...}`` for an invalid one."""
    error: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class ToolCallRow(TenantMixin, Base):
    """One tool call of a step, with its idempotency key ``{run_id}:{step}:{call_index}``."""

    __tablename__ = "tool_calls"
    __table_args__ = (
        UniqueConstraint("idempotency_key"),
        # The portal overview counts a tenant's recent calls per tool from the index alone.
        Index("ix_tool_calls_tenant_started", "tenant_id", "started_at", "tool_name"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step_index: Mapped[int] = mapped_column(Integer)
    call_index: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(120))
    tool_name: Mapped[str] = mapped_column(String(63))
    tool_version: Mapped[str | None] = mapped_column(String(32))
    arguments: Mapped[dict[str, Any]]
    status: Mapped[ToolCallStatus] = mapped_column(_status_column(ToolCallStatus, 16))
    """``STARTED``, ``COMPLETED``, ``FAILED``, ``DENIED`` or ``RETRY``."""
    output: Mapped[str | None] = mapped_column(Text)
    output_bytes: Mapped[int] = mapped_column(Integer, default=0)
    """Size of the full output in bytes, before truncation."""
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class RunEventRow(TenantMixin, Base):
    """An event of a run, appended in the transaction that made it true; streamed over SSE.

    ``id`` increases across the whole store, so it serves as the SSE event id
    (``Last-Event-ID``) even when a run moves between workers.
    """

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run", "run_id", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(String(40))
    type: Mapped[str] = mapped_column(String(32))
    """``run.created``, ``step``, ``tool_call``, ``run.paused``, ``run.resumed``,
    ``run.cancel_requested``, ``run.finished``."""
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KillSwitchRow(TenantMixin, Base):
    """An engaged (or released) kill switch for an agent, a tenant or the whole platform.

    ``tenant_id`` is the tenant of an agent or tenant switch, ``*`` for the platform.
    """

    __tablename__ = "kill_switches"
    __table_args__ = (Index("ix_kill_switches_active", "released_at", "scope"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))
    """``agent``, ``tenant`` or ``platform``."""
    target: Mapped[str] = mapped_column(String(200))
    """Agent name, tenant id, or ``*``."""
    reason: Mapped[str] = mapped_column(Text)
    engaged_by: Mapped[str] = mapped_column(String(200))
    engaged_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(200))
    released_at: Mapped[datetime | None]
