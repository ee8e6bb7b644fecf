"""Eval rows: suites with immutable versions, eval runs, and results per case and grader."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from corral.store import Base, TenantMixin, USDAmount, utcnow

__all__ = [
    "EvalCaseResultRow",
    "EvalGraderResultRow",
    "EvalRunRow",
    "EvalSuiteRow",
    "EvalSuiteVersionRow",
]


class EvalSuiteRow(TenantMixin, Base):
    """An eval suite's identity; its cases live in :class:`EvalSuiteVersionRow`."""

    __tablename__ = "eval_suites"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    latest_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalSuiteVersionRow(TenantMixin, Base):
    """One immutable version of an ``EvalSuite`` document."""

    __tablename__ = "eval_suite_versions"
    __table_args__ = (UniqueConstraint("suite_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    suite_id: Mapped[str] = mapped_column(ForeignKey("eval_suites.id"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(71))
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalRunRow(TenantMixin, Base):
    """One eval: a suite version run on an agent version (bound to its digest)."""

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_gate", "tenant_id", "agent_name", "agent_digest"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    suite_name: Mapped[str] = mapped_column(String(63))
    suite_version: Mapped[str] = mapped_column(String(32))
    suite_digest: Mapped[str] = mapped_column(String(71))
    agent_name: Mapped[str] = mapped_column(String(63))
    agent_version: Mapped[str] = mapped_column(String(32))
    agent_digest: Mapped[str] = mapped_column(String(71))
    repeat: Mapped[int] = mapped_column(Integer)
    """Runs per case."""
    status: Mapped[str] = mapped_column(String(16))
    """``running`` until every case run is graded, then ``completed``."""
    passed: Mapped[bool | None] = mapped_column(Boolean)
    """Whether the suite's thresholds hold; ``None`` while running."""
    summary: Mapped[dict[str, Any] | None]
    """The metrics once completed (success rate, violations, median cost, p95 latency)."""
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class EvalCaseResultRow(TenantMixin, Base):
    """One run of one case: its agent run and, once graded, its outcome."""

    __tablename__ = "eval_case_results"
    __table_args__ = (UniqueConstraint("eval_run_id", "case_name", "repeat_index"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    eval_run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id"), index=True)
    case_name: Mapped[str] = mapped_column(String(63))
    repeat_index: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(40))
    """The agent run; ``None`` when it could not start (``error`` says why)."""
    status: Mapped[str] = mapped_column(String(16))
    """``pending`` (its run is not over) or ``graded``."""
    passed: Mapped[bool | None] = mapped_column(Boolean)
    run_status: Mapped[str | None] = mapped_column(String(24))
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[Decimal] = mapped_column(USDAmount(), default=Decimal(0))
    """The agent run's model calls, US dollars."""
    judge_cost_usd: Mapped[Decimal] = mapped_column(USDAmount(), default=Decimal(0))
    """The model-as-judge calls grading it, US dollars."""
    latency_seconds: Mapped[float | None] = mapped_column(Float)
    policy_violations: Mapped[int] = mapped_column(Integer, default=0)
    """Tool calls denied by policy or needing an approval."""
    graded_at: Mapped[datetime | None]


class EvalGraderResultRow(TenantMixin, Base):
    """One grader's verdict on one case run."""

    __tablename__ = "eval_grader_results"
    __table_args__ = (UniqueConstraint("case_result_id", "grader_index"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_result_id: Mapped[str] = mapped_column(ForeignKey("eval_case_results.id"), index=True)
    eval_run_id: Mapped[str] = mapped_column(String(40), index=True)
    grader_index: Mapped[int] = mapped_column(Integer)
    grader_name: Mapped[str] = mapped_column(String(100))
    grader_type: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    """0..1 (1 for a pass of a pass/fail grader)."""
    detail: Mapped[str] = mapped_column(Text)
    cost_usd: Mapped[Decimal] = mapped_column(USDAmount(), default=Decimal(0))
    """What grading cost (a judge's model call), US dollars."""
