"""Rollouts: a candidate version takes a growing share of a stage's new runs, or is rolled back.

``corral rollout start AGENT@V --stage production --steps 5,25,50,100 --step-minutes M``
splits the stage's new runs between the version bound to it (``baseline``) and the candidate
(``candidate``) by the same deterministic hash as experiments (keyed by run id). With
``--shadow`` a shadow step comes first: the candidate takes no live traffic but runs, in stage
``shadow``, on a copy of every live task, with every tool that is not read-only denied by the
default policy; its results are never returned to the caller, only compared in the status.

The evaluator (:func:`evaluate_rollouts`, called by the worker heartbeat) looks at each running
rollout at most once per ``interval``; the rollout's row is claimed by a conditional update,
so with many workers one evaluates it at a time. It compares the canary (the candidate, or
the shadow runs in the shadow step) with the baseline once the canary has ``min_canary_runs``
finished runs:

* **rollback** when the canary's error rate exceeds the baseline's by more than
  ``max_error_rate_increase`` (absolute), or its p95 latency or median cost exceed the
  baseline's x (1 + the ratio margin): the split ends, the stage keeps its version;
* **advance** when the step's minutes have passed: the next share; reaching 100 promotes the
  candidate through :func:`corral.registry.promote` as the person who started the rollout
  (governed like ``corral promote``: a promotion that needs approvals leaves the rollout
  ``pending_promotion`` at its last share until the approvals arrive or are refused).

Every step, rollback, promotion and abort is stored in ``release_decisions`` and audited
(``rollout.started``, ``rollout.advanced``, ``rollout.rolled_back``, ``rollout.promoted``...).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Agent
from corral.errors import Conflict, InvalidRequest, NotFound, PolicyRefused
from corral.policy import Governance
from corral.registry import (
    BUCKETS,
    AgentRow,
    AgentVersionRow,
    EvalLookup,
    Variant,
    check_gate,
    get_agent_version,
    list_promotions,
    promote,
    put_split,
    remove_split,
    reweight_split,
    stage_bindings,
)
from corral.releases._decisions import record_decision
from corral.releases._experiments import check_runnable
from corral.releases._metrics import SuccessSource, VariantMetrics, shadow_agreement
from corral.releases._status import metrics_json, split_metrics
from corral.releases._tables import RolloutRow
from corral.settings import GovernanceSettings
from corral.store import SYSTEM, Store, new_id

__all__ = [
    "RolloutPlan",
    "RolloutStatus",
    "abort_rollout",
    "breaches",
    "evaluate_rollouts",
    "rollout_status",
    "start_rollout",
]

log = logging.getLogger(__name__)

_ROLLOUTS = cast(Table, RolloutRow.__table__)
_ACTIVE = ("running", "pending_promotion")


@dataclass(frozen=True)
class RolloutPlan:
    """What to roll out.

    Attributes:
        agent_name: The agent.
        version: The candidate version.
        stage: The stage rolled out to (its bound version is the baseline).
        steps_percent: Candidate shares of new runs, increasing, ending at 100.
        step_minutes: Minutes each step lasts at least.
        shadow: Run a shadow step first (candidate on copies of live tasks, read-only tools).
        max_error_rate_increase: Absolute error-rate margin over the baseline (0..1).
        max_latency_increase_ratio: p95 latency margin, as a ratio of the baseline's.
        max_cost_increase_ratio: Median cost margin, as a ratio of the baseline's.
        min_canary_runs: Finished canary runs needed to judge a step (advance or roll back).
    """

    agent_name: str
    version: str
    stage: str
    steps_percent: Sequence[int] = (5, 25, 50, 100)
    step_minutes: int = 30
    shadow: bool = False
    max_error_rate_increase: float = 0.05
    max_latency_increase_ratio: float = 0.5
    max_cost_increase_ratio: float = 0.5
    min_canary_runs: int = 20


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout, its current share and the metrics of its variants.

    Attributes:
        rollout: The rollout row.
        share_percent: The candidate's share of new runs now (0 in the shadow step).
        metrics: Per variant (``baseline``, ``candidate``, ``shadow``).
        breaches: What the canary breaches now (empty when healthy or not yet judged).
        shadow_compared: Finished shadow runs compared with the live run they copied.
        shadow_same: Of those, runs whose output equals the live run's.
    """

    rollout: RolloutRow
    share_percent: int
    metrics: dict[str, VariantMetrics]
    breaches: tuple[str, ...]
    shadow_compared: int = 0
    shadow_same: int = 0


def _check_plan(plan: RolloutPlan) -> list[int]:
    steps = list(plan.steps_percent)
    ordered = all(a < b for a, b in itertools.pairwise(steps))
    if not steps or steps[-1] != 100 or steps[0] < 1 or not ordered:
        raise InvalidRequest(
            f"Rollout steps must be increasing percentages from 1 ending at 100, e.g. "
            f"`--steps 5,25,50,100`; got {','.join(map(str, steps)) or 'none'}."
        )
    if plan.step_minutes < 0 or plan.min_canary_runs < 1:
        raise InvalidRequest("step_minutes must be >= 0 and min_canary_runs >= 1.")
    return [0, *steps] if plan.shadow else steps


def _variants(rollout: RolloutRow, ids: dict[str, str], share: int) -> list[Variant]:
    candidate_bp = share * BUCKETS // 100
    return [
        Variant("baseline", ids["baseline"], rollout.baseline_version, BUCKETS - candidate_bp),
        Variant("candidate", ids["candidate"], rollout.candidate_version, candidate_bp),
    ]


async def start_rollout(
    session: AsyncSession,
    plan: RolloutPlan,
    *,
    tenant_id: str,
    actor: str,
    actor_roles: Sequence[str],
    now: datetime,
    evals: EvalLookup | None = None,
    gate_stages: Sequence[str] | None = None,
    require_eval_for_production: bool | None = None,
) -> RolloutRow:
    """Start rolling ``plan.version`` out to ``plan.stage``; audited ``rollout.started``.

    A rollout to a gated stage (``governance.eval_gate_stages``, default ``staging`` and
    ``production``) runs the promotion's eval gate (:func:`corral.registry.check_gate`) on the
    candidate first, exactly as the promotion at 100% will: a version without a passing eval
    of its digest never takes that stage's traffic, not 5% of it nor its shadow copies.
    (Reaching 100% runs the gate again, through the promotion.)

    Args:
        session: A session inside the caller's transaction.
        plan: What to roll out, where and how.
        tenant_id: Tenant of the caller.
        actor: Principal starting it (the promotion at 100% is made as them).
        actor_roles: Their roles in the tenant.
        now: The current time.
        evals: Reads the latest eval of a digest on a suite (``corral.evals.latest_eval``);
            ``None``: a gated start of an agent with an ``evaluation`` block is refused
            (``eval_gate_unavailable``, fail closed).
        gate_stages: Stages the eval gate applies to (settings ``governance.eval_gate_stages``);
            ``None``: the settings default.
        require_eval_for_production: Settings ``governance.require_eval_for_production``;
            ``None``: the settings default.

    Raises:
        InvalidRequest: bad steps or margins, the candidate is a draft or retired, or it
            already runs in the stage.
        NotFound: no such agent or version, or nothing is bound to the stage yet (promote a
            first version with ``corral promote``: a rollout needs a baseline).
        Conflict: an experiment or rollout already splits the stage; or the eval gate
            refuses the candidate in a gated stage (``eval_gate_failed``,
            ``eval_baseline_missing``, ``eval_gate_unavailable``), as it refuses
            ``corral promote``.
    """
    steps = _check_plan(plan)
    agent, candidate = await get_agent_version(
        session, plan.agent_name, plan.version, tenant_id=tenant_id
    )
    check_runnable(plan.agent_name, candidate.version, candidate.document, plan.stage)
    bound = {
        b.stage: b for b in await stage_bindings(session, plan.agent_name, tenant_id=tenant_id)
    }
    if plan.stage not in bound:
        raise NotFound(
            f"Agent {plan.agent_name!r} has no version in {plan.stage!r} to roll out against; "
            "promote a first one with "
            f"`corral promote {plan.agent_name}@VERSION --to {plan.stage}`.",
            kind="stage_binding",
            name=f"{plan.agent_name}:{plan.stage}",
        )
    baseline_version = bound[plan.stage].version
    if baseline_version == candidate.version:
        raise InvalidRequest(
            f"Stage {plan.stage!r} already runs {plan.agent_name}@{candidate.version}; "
            "roll out a different version."
        )
    defaults = GovernanceSettings()
    stages = defaults.eval_gate_stages if gate_stages is None else gate_stages
    if plan.stage in stages:
        await _check_candidate_gate(
            session,
            evals,
            agent,
            candidate,
            stage=plan.stage,
            tenant_id=tenant_id,
            gate_stages=stages,
            require_eval_for_production=(
                defaults.require_eval_for_production
                if require_eval_for_production is None
                else require_eval_for_production
            ),
        )
    _, baseline = await get_agent_version(
        session, plan.agent_name, baseline_version, tenant_id=tenant_id
    )
    rollout = RolloutRow(
        id=new_id("rollout"),
        tenant_id=tenant_id,
        agent_id=agent.id,
        agent_name=plan.agent_name,
        stage=plan.stage,
        candidate_version=candidate.version,
        baseline_version=baseline.version,
        steps=steps,
        step_index=0,
        step_minutes=plan.step_minutes,
        step_started_at=now,
        shadow=plan.shadow,
        max_error_rate_increase=plan.max_error_rate_increase,
        max_latency_increase_ratio=plan.max_latency_increase_ratio,
        max_cost_increase_ratio=plan.max_cost_increase_ratio,
        min_canary_runs=plan.min_canary_runs,
        status="running",
        started_by=actor,
        started_roles=sorted(actor_roles),
        started_at=now,
    )
    ids = {"baseline": baseline.id, "candidate": candidate.id}

    def write(connection: Connection) -> None:
        put_split(
            connection,
            tenant_id=tenant_id,
            split_id=rollout.id,
            agent_id=agent.id,
            stage=plan.stage,
            kind="rollout",
            key_by="run",
            variants=_variants(rollout, ids, steps[0]),
            now=now,
            shadow_version_id=candidate.id if steps[0] == 0 else None,
        )
        connection.execute(
            _ROLLOUTS.insert(), {c.key: getattr(rollout, c.key) for c in _ROLLOUTS.columns}
        )
        _record(connection, rollout, "started", rollout.started_by, now, {"steps": steps})

    await session.run_sync(lambda sync: write(sync.connection()))
    return rollout


async def _check_candidate_gate(
    session: AsyncSession,
    evals: EvalLookup | None,
    agent: AgentRow,
    candidate: AgentVersionRow,
    *,
    stage: str,
    tenant_id: str,
    gate_stages: Sequence[str],
    require_eval_for_production: bool,
) -> None:
    """The promotion's eval gate on the candidate's digest; raises its ``Conflict``."""
    await check_gate(
        session,
        evals,
        tenant_id=tenant_id,
        agent_id=agent.id,
        agent_name=agent.name,
        version=candidate.version,
        digest=candidate.digest,
        spec=Agent.model_validate(candidate.document).spec,
        stage=stage,
        gate_stages=gate_stages,
        require_eval_for_production=require_eval_for_production,
    )


def _record(
    connection: Connection,
    rollout: RolloutRow,
    decision: str,
    actor: str,
    now: datetime,
    details: dict[str, Any],
) -> None:
    record_decision(
        connection,
        tenant_id=rollout.tenant_id,
        subject_id=rollout.id,
        decision=decision,
        actor=actor,
        action=f"rollout.{decision}",
        subject=f"agent:{rollout.agent_name}@{rollout.candidate_version}",
        details={
            "rollout_id": rollout.id,
            "stage": rollout.stage,
            "baseline": rollout.baseline_version,
            "step_percent": rollout.steps[rollout.step_index],
            **details,
        },
        now=now,
    )


def breaches(rollout: RolloutRow, metrics: dict[str, VariantMetrics]) -> tuple[str, ...]:
    """What the canary breaches against the baseline (empty: healthy, or too few runs yet)."""
    canary = metrics.get("shadow" if rollout.steps[rollout.step_index] == 0 else "candidate")
    base = metrics.get("baseline")
    if canary is None or canary.finished < rollout.min_canary_runs or base is None:
        return ()
    if not base.finished:
        return ()
    found = []
    if (canary.error_rate or 0) > (base.error_rate or 0) + rollout.max_error_rate_increase:
        found.append(f"error_rate {canary.error_rate:.3f} > baseline {base.error_rate:.3f}")
    slow, fast = canary.p95_latency_seconds, base.p95_latency_seconds
    if (
        slow is not None
        and fast is not None
        and slow > fast * (1 + rollout.max_latency_increase_ratio)
    ):
        found.append(f"p95_latency_seconds {slow:.3f} > baseline {fast:.3f}")
    dear, cheap = canary.median_cost_usd, base.median_cost_usd
    if dear is not None and cheap is not None:
        if float(dear) > float(cheap) * (1 + rollout.max_cost_increase_ratio):
            found.append(f"median_cost_usd {dear} > baseline {cheap}")
    return tuple(found)


async def rollout_status(
    session: AsyncSession,
    agent_name: str,
    *,
    tenant_id: str,
    source: SuccessSource | None = None,
) -> RolloutStatus:
    """The agent's latest rollout, with its metrics.

    Raises:
        NotFound: the agent never had a rollout.
    """
    rollout = await _latest(session, agent_name, tenant_id)
    metrics = await split_metrics(session, rollout.id, tenant_id=tenant_id, source=source)
    compared, same = (0, 0)
    if rollout.shadow:
        compared, same = await session.run_sync(
            lambda sync: shadow_agreement(sync.connection(), rollout.id, tenant_id=tenant_id)
        )
    share = rollout.steps[rollout.step_index]
    return RolloutStatus(rollout, share, metrics, breaches(rollout, metrics), compared, same)


async def _latest(session: AsyncSession, agent_name: str, tenant_id: str) -> RolloutRow:
    row = (
        await session.execute(
            select(RolloutRow)
            .where(RolloutRow.tenant_id == tenant_id, RolloutRow.agent_name == agent_name)
            .order_by(RolloutRow.started_at.desc(), RolloutRow.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(
            f"Agent {agent_name!r} has no rollout; start one with "
            f"`corral rollout start {agent_name}@VERSION --stage STAGE`.",
            kind="rollout",
            name=agent_name,
        )
    return row


async def abort_rollout(
    session: AsyncSession, agent_name: str, *, tenant_id: str, actor: str, now: datetime
) -> RolloutRow:
    """Abort the agent's active rollout: the split ends, the stage keeps its version.

    Raises:
        NotFound: the agent never had a rollout.
        Conflict: its latest rollout already ended.
    """
    rollout = await _latest(session, agent_name, tenant_id)
    if rollout.status not in _ACTIVE:
        raise Conflict(
            f"The latest rollout of agent {agent_name!r} ({rollout.id}) is already "
            f"{rollout.status}; there is nothing to abort.",
            code="rollout_ended",
        )
    await session.run_sync(
        lambda sync: _finish(
            sync.connection(), rollout, "aborted", actor, now, {}, reason="aborted"
        )
    )
    await session.refresh(rollout)
    return rollout


def _finish(
    connection: Connection,
    rollout: RolloutRow,
    status: str,
    actor: str,
    now: datetime,
    details: dict[str, Any],
    *,
    reason: str,
) -> None:
    connection.execute(
        _ROLLOUTS.update()
        .where(_ROLLOUTS.c.id == rollout.id)
        .values(status=status, ended_at=now, reason=reason[:500])
    )
    remove_split(connection, rollout.id)
    _record(connection, rollout, status, actor, now, {"reason": reason, **details})


# -- the evaluator ------------------------------------------------------------------------------


async def evaluate_rollouts(
    store: Store,
    governance: Governance,
    *,
    now: datetime,
    stages: Sequence[str] | None = None,
    interval: timedelta = timedelta(seconds=10),
    source: SuccessSource | None = None,
    evals: EvalLookup | None = None,
) -> dict[str, str]:
    """Advance, promote or roll back every active rollout that is due (the worker heartbeat).

    Args:
        store: The store.
        governance: Decides the promotion at 100%.
        now: The current time (the worker's clock; tests pass a manual one).
        stages: The configured stages (settings ``governance.stages``).
        interval: A rollout is evaluated at most once per ``interval``.
        source: Decides which runs succeeded (default: ended ``SUCCEEDED``).
        evals: Reads eval results for the promotion gate at 100% (``corral.evals.latest_eval``);
            ``None``: a gated promotion is refused (``promotion_refused``).

    Returns:
        What happened to each rollout evaluated, by id (``advanced``, ``rolled_back``,
        ``promoted``, ``pending_promotion``, ``promotion_refused``, ``unchanged``).
    """
    async with store.read(SYSTEM) as session:
        due = (
            await session.execute(
                select(RolloutRow.id, RolloutRow.tenant_id).where(RolloutRow.status.in_(_ACTIVE))
            )
        ).all()
    outcomes = {}
    for rollout_id, tenant_id in due:
        try:
            outcome = await _evaluate_one(
                store, governance, rollout_id, tenant_id, now, stages, interval, source, evals
            )
        except Exception:
            log.exception(
                "evaluating rollout %s failed; the next heartbeat tries again", rollout_id
            )
            continue
        if outcome is not None:
            outcomes[rollout_id] = outcome
    return outcomes


async def _evaluate_one(
    store: Store,
    governance: Governance,
    rollout_id: str,
    tenant_id: str,
    now: datetime,
    stages: Sequence[str] | None,
    interval: timedelta,
    source: SuccessSource | None,
    evals: EvalLookup | None = None,
) -> str | None:
    refused: PolicyRefused | None = None
    gate_failure: Conflict | None = None
    async with store.transaction(tenant_id) as session:
        claimed = await session.run_sync(
            lambda sync: _claim(sync.connection(), rollout_id, now, interval)
        )
        if not claimed:
            return None  # another worker evaluates it, or did so within the interval
        rollout = await session.get(RolloutRow, rollout_id)
        assert rollout is not None
        try:
            return await _judge(session, governance, rollout, now, stages, source, evals)
        except PolicyRefused as exc:
            refused = exc
        except Conflict as exc:
            if not exc.code.startswith("eval_"):
                raise
            gate_failure = exc  # the eval gate refused the candidate at 100%
    if refused is not None:
        await store.run_sync(refused.record, tenant_id)
    reason = (refused or gate_failure or Conflict("refused")).message
    async with store.transaction(tenant_id) as session:
        rollout = await session.get(RolloutRow, rollout_id)
        assert rollout is not None
        await session.run_sync(
            lambda sync: _finish(
                sync.connection(),
                rollout,
                "promotion_refused",
                "system:rollouts",
                now,
                {},
                reason=reason,
            )
        )
    return "promotion_refused"


def _claim(connection: Connection, rollout_id: str, now: datetime, interval: timedelta) -> bool:
    """Take the rollout for this evaluation: at most one evaluator per interval."""
    done = connection.execute(
        _ROLLOUTS.update()
        .where(
            _ROLLOUTS.c.id == rollout_id,
            _ROLLOUTS.c.status.in_(_ACTIVE),
            (_ROLLOUTS.c.evaluated_at.is_(None)) | (_ROLLOUTS.c.evaluated_at <= now - interval),
        )
        .values(evaluated_at=now)
    )
    return done.rowcount == 1


async def _judge(
    session: AsyncSession,
    governance: Governance,
    rollout: RolloutRow,
    now: datetime,
    stages: Sequence[str] | None,
    source: SuccessSource | None,
    evals: EvalLookup | None = None,
) -> str:
    if rollout.status == "pending_promotion":
        return await _settle_promotion(session, rollout, now)
    metrics = await split_metrics(session, rollout.id, tenant_id=rollout.tenant_id, source=source)
    found = breaches(rollout, metrics)
    actor = "system:rollouts"
    if found:
        details = {"breaches": list(found), "metrics": metrics_json(metrics)}
        await session.run_sync(
            lambda sync: _finish(
                sync.connection(),
                rollout,
                "rolled_back",
                actor,
                now,
                details,
                reason="; ".join(found),
            )
        )
        return "rolled_back"
    canary = metrics.get("shadow" if rollout.steps[rollout.step_index] == 0 else "candidate")
    ready = canary is not None and canary.finished >= rollout.min_canary_runs
    if not ready or now - rollout.step_started_at < timedelta(minutes=rollout.step_minutes):
        return "unchanged"
    if rollout.steps[rollout.step_index + 1] == 100:
        return await _promote(session, governance, rollout, now, stages, metrics, evals)
    return await _advance(session, rollout, now, metrics)


async def _advance(
    session: AsyncSession, rollout: RolloutRow, now: datetime, metrics: dict[str, VariantMetrics]
) -> str:
    index = rollout.step_index + 1
    ids = await _version_ids(session, rollout)

    def write(connection: Connection) -> None:
        connection.execute(
            _ROLLOUTS.update()
            .where(_ROLLOUTS.c.id == rollout.id)
            .values(step_index=index, step_started_at=now)
        )
        rollout.step_index = index
        # Past the shadow step the candidate takes live traffic and its shadow copies stop.
        variants = _variants(rollout, ids, rollout.steps[index])
        reweight_split(connection, rollout.id, variants, now=now)
        _record(
            connection,
            rollout,
            "advanced",
            "system:rollouts",
            now,
            {"metrics": metrics_json(metrics)},
        )

    await session.run_sync(lambda sync: write(sync.connection()))
    return "advanced"


async def _version_ids(session: AsyncSession, rollout: RolloutRow) -> dict[str, str]:
    name, tenant = rollout.agent_name, rollout.tenant_id
    _, baseline = await get_agent_version(session, name, rollout.baseline_version, tenant_id=tenant)
    _, candidate = await get_agent_version(
        session, name, rollout.candidate_version, tenant_id=tenant
    )
    return {"baseline": baseline.id, "candidate": candidate.id}


async def _promote(
    session: AsyncSession,
    governance: Governance,
    rollout: RolloutRow,
    now: datetime,
    stages: Sequence[str] | None,
    metrics: dict[str, VariantMetrics],
    evals: EvalLookup | None = None,
) -> str:
    """Bind the candidate through the promotion service, as the rollout's starter."""
    promotion = await promote(
        session,
        governance,
        tenant_id=rollout.tenant_id,
        actor=rollout.started_by,
        agent_name=rollout.agent_name,
        version=rollout.candidate_version,
        stage=rollout.stage,
        stages=stages,
        actor_roles=rollout.started_roles,
        evals=evals,
    )
    details = {"promotion_id": promotion.id, "metrics": metrics_json(metrics)}
    if promotion.status == "done":
        await session.run_sync(
            lambda sync: _finish(
                sync.connection(),
                rollout,
                "promoted",
                "system:rollouts",
                now,
                details,
                reason=f"promotion {promotion.id}",
            )
        )
        return "promoted"

    def wait(connection: Connection) -> None:
        connection.execute(
            _ROLLOUTS.update()
            .where(_ROLLOUTS.c.id == rollout.id)
            .values(status="pending_promotion", reason=f"promotion {promotion.id}")
        )
        _record(connection, rollout, "pending_promotion", "system:rollouts", now, details)

    await session.run_sync(lambda sync: wait(sync.connection()))
    return "pending_promotion"


async def _settle_promotion(session: AsyncSession, rollout: RolloutRow, now: datetime) -> str:
    """A promotion awaited approvals: end the rollout once it is done or rejected."""
    promotion_id = (rollout.reason or "").removeprefix("promotion ")
    found = [
        p
        for p in await list_promotions(session, rollout.agent_name, tenant_id=rollout.tenant_id)
        if p.id == promotion_id
    ]
    if not found or found[0].status == "pending_approval":
        return "unchanged"
    status = "promoted" if found[0].status == "done" else "rolled_back"
    await session.run_sync(
        lambda sync: _finish(
            sync.connection(),
            rollout,
            status,
            "system:rollouts",
            now,
            {"promotion_id": promotion_id},
            reason=f"promotion {promotion_id} {found[0].status}",
        )
    )
    return status
