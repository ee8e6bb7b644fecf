"""Experiments: agent versions sharing a stage's new runs, compared on their outcomes.

An experiment splits the new runs of one agent in one stage between variants (versions of the
agent, each with a weight) by a deterministic hash of a key (see
:mod:`corral.registry` ``assign_version``: SHA-256 of experiment id + key, bucket 0..9,999).
Each variant's runs are compared to the first variant (the control) by a two-sided
two-proportion z-test on the experiment's metric (success rate or error rate).

Stop rule, applied by :func:`evaluate_experiments` (the worker heartbeat) and reported by
:func:`experiment_status`: once every variant has at least ``min_samples`` finished runs and a
comparison with the control has p < alpha / (variants - 1) (Bonferroni), the experiment is
``decided`` with the better variant as winner; once ``max_duration_seconds`` have passed it is
``decided`` without a winner. Either way the split ends (new runs get the stage's bound version
again), the decision is stored in ``release_decisions`` and audited ``experiment.decided``.
Nothing is promoted: that stays a person's ``corral promote``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from corral.contracts import Agent
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.registry import (
    KeyBy,
    Variant,
    get_agent,
    get_agent_version,
    put_split,
    remove_split,
    stage_bindings,
)
from corral.releases._decisions import record_decision
from corral.releases._metrics import SuccessSource, VariantMetrics
from corral.releases._stats import two_proportion_z_test
from corral.releases._status import metrics_json, split_metrics
from corral.releases._tables import ExperimentRow
from corral.store import new_id

__all__ = [
    "Comparison",
    "ExperimentPlan",
    "ExperimentStatus",
    "Verdict",
    "check_runnable",
    "evaluate_experiment",
    "evaluate_experiments",
    "experiment_status",
    "list_experiments",
    "start_experiment",
    "stop_experiment",
]

Metric = Literal["success", "error"]
_EXPERIMENTS = cast(Table, ExperimentRow.__table__)


@dataclass(frozen=True)
class ExperimentPlan:
    """What to start.

    Attributes:
        name: A name for people (``shorter-prompt``).
        agent_name: The agent whose versions are compared.
        stage: The stage whose new runs are split.
        variants: ``(name, version, weight_percent)``; the first is the control; weights sum
            to 100 (hundredths of a percent are kept).
        key_by: Hash the run id (``run``), the requesting principal (``user``) or the run's
            ``session_id`` (``session``; a run created without one is hashed by its run id).
        metric: Compare success rates (``success``) or error rates (``error``).
        min_samples: Finished runs each variant needs before the test may stop it (>= 1).
        alpha: Significance level (0 < alpha < 1).
        max_duration: The experiment is decided without a winner after this long.
    """

    name: str
    agent_name: str
    stage: str
    variants: Sequence[tuple[str, str, float]]
    key_by: KeyBy = "run"
    metric: Metric = "success"
    min_samples: int = 100
    alpha: float = 0.05
    max_duration: timedelta = timedelta(days=14)


@dataclass(frozen=True)
class Comparison:
    """One variant against the control.

    Attributes:
        variant: The variant compared.
        z: The z statistic (positive: the variant's rate is higher).
        p_value: Two-sided p-value.
        significant: ``p_value`` below the (Bonferroni-corrected) alpha.
    """

    variant: str
    z: float
    p_value: float
    significant: bool


@dataclass(frozen=True)
class Verdict:
    """What the stop rule says now.

    Attributes:
        stop: Whether the experiment should end.
        reason: ``significant``, ``max_duration`` or why it goes on.
        winner: The winning variant, when one is significantly better.
        comparisons: Each variant against the control (once both have finished runs).
    """

    stop: bool
    reason: str
    winner: str | None
    comparisons: tuple[Comparison, ...]


@dataclass(frozen=True)
class ExperimentStatus:
    """An experiment with its per-variant metrics and the stop rule's verdict."""

    experiment: ExperimentRow
    metrics: dict[str, VariantMetrics]
    verdict: Verdict


async def start_experiment(
    session: AsyncSession, plan: ExperimentPlan, *, tenant_id: str, actor: str, now: datetime
) -> ExperimentRow:
    """Start splitting the agent's new runs in ``plan.stage`` between the variants.

    Audited ``experiment.started``; the decision is stored in ``release_decisions``.

    Raises:
        NotFound: no such agent or version, or no version is bound to the stage.
        InvalidRequest: fewer than two variants, duplicate names, weights not summing to 100,
            or a bad ``min_samples`` / ``alpha``.
        Conflict: an experiment or rollout already splits the stage.
    """
    _check_plan(plan)
    agent = await get_agent(session, plan.agent_name, tenant_id=tenant_id)
    bound = await stage_bindings(session, plan.agent_name, tenant_id=tenant_id)
    if plan.stage not in {binding.stage for binding in bound}:
        # Runs in a stage start from its bound version: without one, no run would start.
        raise NotFound(
            f"Agent {plan.agent_name!r} has no version in {plan.stage!r}, so no run starts "
            f"there to split; promote one first (`corral promote {plan.agent_name}@VERSION "
            f"--to {plan.stage}`).",
            kind="stage_binding",
            name=f"{plan.agent_name}:{plan.stage}",
        )
    variants = []
    for name, version, weight in plan.variants:
        _, row = await get_agent_version(session, plan.agent_name, version, tenant_id=tenant_id)
        check_runnable(plan.agent_name, row.version, row.document, plan.stage)
        variants.append(Variant(name, row.id, row.version, round(weight * 100)))
    experiment = ExperimentRow(
        id=new_id("exp"),
        tenant_id=tenant_id,
        name=plan.name,
        agent_id=agent.id,
        agent_name=plan.agent_name,
        stage=plan.stage,
        key_by=plan.key_by,
        variants=[
            {"name": v.name, "version": v.version, "weight_bp": v.weight_bp} for v in variants
        ],
        metric=plan.metric,
        min_samples=plan.min_samples,
        alpha=plan.alpha,
        max_duration_seconds=int(plan.max_duration.total_seconds()),
        status="running",
        started_by=actor,
        started_at=now,
    )

    def write(connection: Connection) -> None:
        put_split(
            connection,
            tenant_id=tenant_id,
            split_id=experiment.id,
            agent_id=agent.id,
            stage=plan.stage,
            kind="experiment",
            key_by=plan.key_by,
            variants=variants,
            now=now,
        )
        connection.execute(
            _EXPERIMENTS.insert(),
            {c.key: getattr(experiment, c.key) for c in _EXPERIMENTS.columns},
        )
        record_decision(
            connection,
            tenant_id=tenant_id,
            subject_id=experiment.id,
            decision="started",
            actor=actor,
            action="experiment.started",
            subject=f"experiment:{experiment.id}",
            details={
                "agent": plan.agent_name,
                "stage": plan.stage,
                "variants": experiment.variants,
            },
            now=now,
        )

    await session.run_sync(lambda sync: write(sync.connection()))
    return experiment


def check_runnable(agent_name: str, version: str, document: dict[str, Any], stage: str) -> None:
    """Refuse a draft or retired version: runs of it would be refused outside ``dev``.

    Raises:
        InvalidRequest: the version is a draft or retired.
    """
    status = Agent.model_validate(document).spec.status
    if status in ("draft", "retired"):
        raise InvalidRequest(
            f"Agent {agent_name!r}@{version} is {status}: its runs in {stage!r} would be "
            "refused; apply it with status 'active' (a new version) and use that."
        )


def _check_plan(plan: ExperimentPlan) -> None:
    names = [name for name, _, _ in plan.variants]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidRequest(
            "An experiment needs at least two variants with distinct names, e.g. "
            "`--variant control=1.0.0:50 --variant candidate=1.1.0:50`."
        )
    if plan.min_samples < 1 or not 0 < plan.alpha < 1:
        raise InvalidRequest(
            f"min_samples must be at least 1 and alpha between 0 and 1 (exclusive); got "
            f"min_samples={plan.min_samples}, alpha={plan.alpha}."
        )


def evaluate_experiment(
    experiment: ExperimentRow, metrics: dict[str, VariantMetrics], now: datetime
) -> Verdict:
    """Apply the stop rule to ``metrics`` (see the module docstring)."""
    names = [variant["name"] for variant in experiment.variants]
    control = names[0]
    corrected = experiment.alpha / (len(names) - 1)
    comparisons = []
    for name in names[1:]:
        found = _compare(metrics.get(control), metrics.get(name), experiment.metric)
        if found is not None:
            z, p_value = found
            comparisons.append(Comparison(name, z, p_value, p_value < corrected))
    enough = all(
        (m := metrics.get(name)) is not None and m.finished >= experiment.min_samples
        for name in names
    )
    significant = [c for c in comparisons if c.significant]
    if enough and significant:
        return Verdict(
            True,
            "significant",
            _winner(control, significant, experiment.metric),
            tuple(comparisons),
        )
    if now - experiment.started_at >= timedelta(seconds=experiment.max_duration_seconds):
        return Verdict(True, "max_duration", None, tuple(comparisons))
    reason = "significant_but_under_min_samples" if significant else "collecting"
    return Verdict(False, reason, None, tuple(comparisons))


def _compare(
    control: VariantMetrics | None, other: VariantMetrics | None, metric: str
) -> tuple[float, float] | None:
    if control is None or other is None or not control.finished or not other.finished:
        return None
    if metric == "error":
        result = two_proportion_z_test(
            control.errors, control.finished, other.errors, other.finished
        )
    else:
        result = two_proportion_z_test(
            control.successes, control.finished, other.successes, other.finished
        )
    return result.z, result.p_value


def _winner(control: str, significant: list[Comparison], metric: str) -> str:
    """The best variant: higher success rate, or lower error rate, than the control."""
    better = [c for c in significant if (c.z > 0) == (metric == "success")]
    if not better:
        return control  # every significant difference favours the control
    return max(better, key=lambda c: abs(c.z)).variant


async def experiment_status(
    session: AsyncSession,
    experiment_id: str,
    *,
    tenant_id: str,
    now: datetime,
    source: SuccessSource | None = None,
) -> ExperimentStatus:
    """The experiment, its per-variant metrics and what the stop rule says now.

    Raises:
        NotFound: no such experiment in this tenant.
    """
    experiment = await _get(session, experiment_id, tenant_id)
    metrics = await split_metrics(session, experiment.id, tenant_id=tenant_id, source=source)
    return ExperimentStatus(experiment, metrics, evaluate_experiment(experiment, metrics, now))


async def list_experiments(session: AsyncSession, *, tenant_id: str) -> list[ExperimentRow]:
    """The tenant's experiments, newest first."""
    rows = await session.execute(
        select(ExperimentRow)
        .where(ExperimentRow.tenant_id == tenant_id)
        .order_by(ExperimentRow.started_at.desc(), ExperimentRow.id.desc())
    )
    return list(rows.scalars())


async def _get(session: AsyncSession, experiment_id: str, tenant_id: str) -> ExperimentRow:
    row = (
        await session.execute(
            select(ExperimentRow).where(
                ExperimentRow.id == experiment_id, ExperimentRow.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(
            f"Experiment {experiment_id!r} not found; list them with `corral experiments status`.",
            kind="experiment",
            name=experiment_id,
        )
    return row


async def stop_experiment(
    session: AsyncSession,
    experiment_id: str,
    *,
    tenant_id: str,
    actor: str,
    now: datetime,
    source: SuccessSource | None = None,
) -> ExperimentStatus:
    """Stop a running experiment by hand: the split ends; audited ``experiment.stopped``.

    Returns:
        The experiment (now ``stopped``), its final metrics and the verdict it was stopped at.

    Raises:
        NotFound: no such experiment in this tenant.
        Conflict: it is no longer running.
    """
    status = await experiment_status(
        session, experiment_id, tenant_id=tenant_id, now=now, source=source
    )
    await session.run_sync(
        lambda sync: _end(sync.connection(), status, "stopped", actor, None, now)
    )
    await session.refresh(status.experiment)
    return status


def _end(
    connection: Connection,
    status: ExperimentStatus,
    outcome: Literal["stopped", "decided"],
    actor: str,
    winner: str | None,
    now: datetime,
) -> None:
    experiment = status.experiment
    ended = connection.execute(
        _EXPERIMENTS.update()
        .where(_EXPERIMENTS.c.id == experiment.id, _EXPERIMENTS.c.status == "running")
        .values(status=outcome, winner=winner, ended_at=now)
    )
    if ended.rowcount != 1:
        raise Conflict(
            f"Experiment {experiment.id} is already {experiment.status}; nothing to stop.",
            code="experiment_ended",
        )
    remove_split(connection, experiment.id)
    record_decision(
        connection,
        tenant_id=experiment.tenant_id,
        subject_id=experiment.id,
        decision=outcome,
        actor=actor,
        action=f"experiment.{outcome}",
        subject=f"experiment:{experiment.id}",
        details={
            "agent": experiment.agent_name,
            "stage": experiment.stage,
            "winner": winner,
            "reason": status.verdict.reason,
            "metrics": metrics_json(status.metrics),
            "comparisons": [
                {"variant": c.variant, "z": f"{c.z:.6g}", "p_value": f"{c.p_value:.6g}"}
                for c in status.verdict.comparisons
            ],
        },
        now=now,
    )


def _end_sync(
    sync: Session, *, status: ExperimentStatus, winner: str | None, now: datetime
) -> None:
    _end(sync.connection(), status, "decided", "system:experiments", winner, now)


async def evaluate_experiments(
    session: AsyncSession, *, now: datetime, source: SuccessSource | None = None
) -> list[str]:
    """Apply the stop rule to every running experiment (all tenants: a system session).

    Returns:
        The ids of the experiments decided now.
    """
    running = await session.execute(select(ExperimentRow).where(ExperimentRow.status == "running"))
    decided = []
    for experiment in list(running.scalars()):
        status = await experiment_status(
            session, experiment.id, tenant_id=experiment.tenant_id, now=now, source=source
        )
        if status.verdict.stop:
            await session.run_sync(
                functools.partial(_end_sync, status=status, winner=status.verdict.winner, now=now)
            )
            decided.append(experiment.id)
    return decided
