"""Release rows: experiments, rollouts and the decisions taken about them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, JSONType, TenantMixin, utcnow

__all__ = ["ExperimentRow", "ReleaseDecisionRow", "RolloutRow"]


class ExperimentRow(TenantMixin, Base):
    """An A/B experiment: versions of one agent sharing the new runs of a stage."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """``exp_`` + 32 hex digits; also the salt of its traffic split's hash."""
    name: Mapped[str] = mapped_column(String(63))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    agent_name: Mapped[str] = mapped_column(String(63))
    stage: Mapped[str] = mapped_column(String(32))
    key_by: Mapped[str] = mapped_column(String(16))
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    """``[{"name", "version", "weight_bp"}]``; the first variant is the control."""
    metric: Mapped[str] = mapped_column(String(16))
    """The rate the significance test compares: ``success`` or ``error``."""
    min_samples: Mapped[int] = mapped_column(Integer)
    """Finished runs each variant needs before the test may stop the experiment."""
    alpha: Mapped[float] = mapped_column(Float)
    """Significance level of the two-sided two-proportion z-test."""
    max_duration_seconds: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    """``running``, ``decided`` (the stop rule ended it) or ``stopped`` (by a person)."""
    winner: Mapped[str | None] = mapped_column(String(63))
    started_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class RolloutRow(TenantMixin, Base):
    """A canary rollout of a candidate version to a stage, step by step."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    agent_name: Mapped[str] = mapped_column(String(63))
    stage: Mapped[str] = mapped_column(String(32))
    candidate_version: Mapped[str] = mapped_column(String(32))
    baseline_version: Mapped[str] = mapped_column(String(32))
    steps: Mapped[list[int]] = mapped_column(JSONType)
    """Candidate shares of new runs, in percent, ending at 100 (``[5, 25, 50, 100]``)."""
    step_index: Mapped[int] = mapped_column(Integer)
    step_minutes: Mapped[int] = mapped_column(Integer)
    step_started_at: Mapped[datetime]
    shadow: Mapped[bool] = mapped_column(Boolean)
    max_error_rate_increase: Mapped[float] = mapped_column(Float)
    """Rollback when the canary's error rate exceeds the baseline's by more (absolute, 0..1)."""
    max_latency_increase_ratio: Mapped[float] = mapped_column(Float)
    """Rollback when the canary's p95 latency exceeds the baseline's x (1 + this)."""
    max_cost_increase_ratio: Mapped[float] = mapped_column(Float)
    """Rollback when the canary's median cost exceeds the baseline's x (1 + this)."""
    min_canary_runs: Mapped[int] = mapped_column(Integer)
    """Finished canary runs needed before a breach can roll back (or a step advance)."""
    status: Mapped[str] = mapped_column(String(24))
    """``running``, ``promoted``, ``pending_promotion``, ``rolled_back`` or ``aborted``."""
    reason: Mapped[str | None] = mapped_column(String(500))
    started_by: Mapped[str] = mapped_column(String(200))
    started_roles: Mapped[list[str]] = mapped_column(JSONType)
    """The starter's roles: the promotion at 100% is decided as the starter."""
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    evaluated_at: Mapped[datetime | None]
    """When an evaluator last looked at it (the worker heartbeat)."""


class ReleaseDecisionRow(TenantMixin, Base):
    """A decision about an experiment or a rollout, with the metrics it was taken on."""

    __tablename__ = "release_decisions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(40), index=True)
    """The experiment or rollout."""
    decision: Mapped[str] = mapped_column(String(24))
    """``advanced``, ``promoted``, ``pending_promotion``, ``rolled_back``, ``decided``..."""
    details: Mapped[dict[str, Any]]
    decided_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
