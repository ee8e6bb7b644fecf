"""Request and response bodies of ``/v1/experiments`` and ``/v1/agents/{name}/rollouts``."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.releases import ExperimentStatus, RolloutStatus, VariantMetrics

__all__ = [
    "ExperimentCreate",
    "ExperimentOut",
    "ExperimentStatusOut",
    "RolloutCreate",
    "RolloutOut",
    "RolloutStatusOut",
    "VariantIn",
    "VariantMetricsOut",
    "metrics_out",
]

_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_STAGE = r"^[a-z][a-z0-9-]{0,31}$"


class VariantIn(BaseModel):
    """One variant of an experiment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME, description="Variant name (control, treatment...).")
    version: str = Field(min_length=1, max_length=32, description="The agent version it runs.")
    weight_percent: float = Field(ge=0, le=100, description="Share of new runs, in percent.")


class ExperimentCreate(BaseModel):
    """Start an experiment: the first variant is the control."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    agent: str = Field(pattern=_NAME)
    stage: str = Field(pattern=_STAGE)
    variants: list[VariantIn] = Field(min_length=2, max_length=10)
    key_by: Literal["run", "user", "session"] = "run"
    """Hash the run id, the requesting principal (a user keeps one variant) or the run's
    ``session_id`` (a session keeps one variant; a run without one is keyed by its id)."""
    metric: Literal["success", "error"] = "success"
    min_samples: int = Field(100, ge=1, le=1_000_000)
    """Finished runs each variant needs before the stop rule may end it."""
    alpha: float = Field(0.05, gt=0, lt=1)
    max_duration_hours: float = Field(336, gt=0, le=24 * 365)


class ExperimentOut(BaseModel):
    """An experiment."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    agent_name: str
    stage: str
    key_by: str
    variants: list[dict[str, str | int]]
    metric: str
    min_samples: int
    alpha: float
    max_duration_seconds: int
    status: str
    winner: str | None
    started_by: str
    started_at: datetime
    ended_at: datetime | None


class VariantMetricsOut(BaseModel):
    """What a variant's runs did (rates 0..1; cost in US dollars; latency in seconds)."""

    runs: int
    finished: int
    errors: int
    successes: int
    error_rate: float | None
    success_rate: float | None
    median_cost_usd: Decimal | None
    p95_latency_seconds: float | None


def metrics_out(metrics: dict[str, VariantMetrics]) -> dict[str, VariantMetricsOut]:
    """Per-variant metrics as response bodies."""
    return {
        name: VariantMetricsOut(
            runs=m.runs,
            finished=m.finished,
            errors=m.errors,
            successes=m.successes,
            error_rate=m.error_rate,
            success_rate=m.success_rate,
            median_cost_usd=m.median_cost_usd,
            p95_latency_seconds=m.p95_latency_seconds,
        )
        for name, m in sorted(metrics.items())
    }


class ExperimentStatusOut(BaseModel):
    """An experiment with its metrics and the stop rule's verdict now."""

    experiment: ExperimentOut
    metrics: dict[str, VariantMetricsOut]
    stop: bool
    reason: str
    winner: str | None
    comparisons: list[dict[str, str | float | bool]]

    @classmethod
    def of(cls, status: ExperimentStatus) -> ExperimentStatusOut:
        """The response for ``status``."""
        verdict = status.verdict
        return cls(
            experiment=ExperimentOut.model_validate(status.experiment),
            metrics=metrics_out(status.metrics),
            stop=verdict.stop,
            reason=verdict.reason,
            winner=verdict.winner,
            comparisons=[
                {"variant": c.variant, "z": c.z, "p_value": c.p_value, "significant": c.significant}
                for c in verdict.comparisons
            ],
        )


class RolloutCreate(BaseModel):
    """Start a rollout of a version to a stage."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=32)
    stage: str = Field(pattern=_STAGE)
    steps_percent: list[int] = Field([5, 25, 50, 100], min_length=1, max_length=20)
    step_minutes: int = Field(30, ge=0, le=7 * 24 * 60)
    shadow: bool = False
    max_error_rate_increase: float = Field(0.05, ge=0, le=1)
    max_latency_increase_ratio: float = Field(0.5, ge=0)
    max_cost_increase_ratio: float = Field(0.5, ge=0)
    min_canary_runs: int = Field(20, ge=1, le=1_000_000)


class RolloutOut(BaseModel):
    """A rollout."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    agent_name: str
    stage: str
    candidate_version: str
    baseline_version: str
    steps: list[int]
    step_index: int
    step_minutes: int
    step_started_at: datetime
    shadow: bool
    min_canary_runs: int
    status: str
    reason: str | None
    started_by: str
    started_at: datetime
    ended_at: datetime | None


class RolloutStatusOut(BaseModel):
    """A rollout with its share now, per-variant metrics and current breaches."""

    rollout: RolloutOut
    share_percent: int
    metrics: dict[str, VariantMetricsOut]
    breaches: list[str]
    shadow_compared: int
    """Finished shadow runs compared with the live run they copied."""
    shadow_same: int
    """Of those, runs whose output equals the live run's."""

    @classmethod
    def of(cls, status: RolloutStatus) -> RolloutStatusOut:
        """The response for ``status``."""
        return cls(
            rollout=RolloutOut.model_validate(status.rollout),
            share_percent=status.share_percent,
            metrics=metrics_out(status.metrics),
            breaches=list(status.breaches),
            shadow_compared=status.shadow_compared,
            shadow_same=status.shadow_same,
        )
