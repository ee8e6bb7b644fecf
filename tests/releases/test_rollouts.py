"""Rollouts and experiments on a real store (SQLite and PostgreSQL), with an explicit clock.

The baseline answers; a bad candidate replies with something that is not a decision, and
with one iteration allowed its runs end BUDGET_EXCEEDED (an error).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select

from conftest import agent_document, register
from corral.audit._tables import AuditEventRow
from corral.errors import Conflict, InvalidRequest
from corral.evals import latest_eval
from corral.platform import Platform
from corral.registry import Variant as SplitVariant
from corral.registry import bucket_of, choose_variant, promote, stage_bindings
from corral.releases import (
    ExperimentPlan,
    ReleaseDecisionRow,
    RolloutPlan,
    RolloutRow,
    VariantMetrics,
    abort_rollout,
    breaches,
    evaluate_experiments,
    evaluate_rollouts,
    experiment_status,
    rollout_status,
    start_experiment,
    start_rollout,
)
from corral.runtime import RunRow, RunStatus, start_run
from corral.settings import GovernanceSettings, ReleaseSettings, Settings
from corral.store import Base
from corral.testing import ManualClock, ScriptedModel

AGENT = "repo-analyst"
ADMIN = "user:local-admin"
ROLES = ["admin", "builder", "operator", "approver", "platform-admin"]
STAGE = "staging"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"governance": GovernanceSettings(roles={ADMIN: ROLES})})


async def world(
    make_platform: Any, *, bad_candidate: bool, **candidate_spec: Any
) -> tuple[Platform, ManualClock]:
    """v0.1.0 answers and runs in staging; v0.1.1 (the candidate) answers too, or fails."""
    platform = await make_platform(
        scripted=ScriptedModel(lambda request: ScriptedModel.answer("ok")),
        flaky=ScriptedModel(lambda request: "this is not a decision"),
    )
    clock = ManualClock()
    platform.executor.clock = clock
    platform.worker.clock = clock
    await register(platform, agent_document(AGENT, description="The baseline."))
    candidate: dict[str, Any] = {"description": "The candidate.", **candidate_spec}
    if bad_candidate:
        candidate.update(model={"default": "flaky/test"}, limits={"max_iterations": 1})
    await register(platform, agent_document(AGENT, **candidate))
    async with platform.store.transaction("default") as session:
        await promote(
            session,
            platform.governance,
            tenant_id="default",
            actor=ADMIN,
            agent_name=AGENT,
            version="0.1.0",
            stage=STAGE,
            actor_roles=ROLES,
        )
    return platform, clock


async def runs(platform: Platform, count: int, *, user: str = ADMIN) -> list[RunRow]:
    """Start ``count`` runs in staging and drive them to the end."""
    started = [
        await start_run(
            platform.store,
            tenant_id="default",
            agent_name=AGENT,
            task=f"Question {i}",
            requested_by=user,
            requester_roles=ROLES,
            stage=STAGE,
            governance=platform.governance,
        )
        for i in range(count)
    ]
    await platform.worker.run_until_idle()
    return started


async def start(
    platform: Platform, clock: ManualClock, gate_stages: list[str] | None = None, **plan: Any
) -> str:
    async with platform.store.transaction("default") as session:
        rollout = await start_rollout(
            session,
            RolloutPlan(agent_name=AGENT, version="0.1.1", stage=STAGE, **plan),
            tenant_id="default",
            actor=ADMIN,
            actor_roles=ROLES,
            now=clock(),
            evals=latest_eval,
            gate_stages=gate_stages,
        )
    return rollout.id


async def evaluate(platform: Platform, clock: ManualClock) -> str | None:
    outcomes = await evaluate_rollouts(
        platform.store, platform.governance, now=clock(), stages=platform.settings.governance.stages
    )
    return next(iter(outcomes.values()), None)


async def staging_version(platform: Platform) -> str:
    async with platform.store.read("default") as session:
        bindings = await stage_bindings(session, AGENT, tenant_id="default")
    return {b.stage: b.version for b in bindings}[STAGE]


async def audit_actions(platform: Platform, prefix: str) -> list[str]:
    async with platform.store.read("default") as session:
        rows = await session.execute(
            select(AuditEventRow.action)
            .where(AuditEventRow.action.like(f"{prefix}%"))
            .order_by(AuditEventRow.seq)
        )
    return list(rows.scalars())


async def test_a_healthy_canary_advances_step_by_step_and_is_promoted(make_platform: Any) -> None:
    platform, clock = await world(make_platform, bad_candidate=False)
    rollout_id = await start(
        platform, clock, steps_percent=(25, 50, 100), step_minutes=10, min_canary_runs=2
    )
    first = await runs(platform, 40)
    versions = Counter(run.agent_version for run in first)
    assert set(versions) == {"0.1.0", "0.1.1"}  # both versions take traffic at 25%
    # Each run got the variant its id hashes to.
    arms = [
        SplitVariant("baseline", "", "0.1.0", 7_500),
        SplitVariant("candidate", "", "0.1.1", 2_500),
    ]
    assert all(
        choose_variant(arms, bucket_of(rollout_id, run.id)).version == run.agent_version
        for run in first
    )
    clock.advance(seconds=5 * 60)
    assert await evaluate(platform, clock) == "unchanged"  # the step's 10 minutes are not over
    # A second evaluator (another worker's heartbeat) within the interval finds it claimed.
    assert await evaluate(platform, clock) is None
    clock.advance(seconds=6 * 60)
    assert await evaluate(platform, clock) == "advanced"
    await runs(platform, 20)
    clock.advance(seconds=11 * 60)
    assert await evaluate(platform, clock) == "promoted"

    assert await staging_version(platform) == "0.1.1"
    assert {run.agent_version for run in await runs(platform, 5)} == {"0.1.1"}
    async with platform.store.read("default") as session:
        status = await rollout_status(session, AGENT, tenant_id="default")
    assert status.rollout.status == "promoted"
    assert status.metrics["candidate"].errors == 0
    assert await audit_actions(platform, "rollout.") == [
        "rollout.started",
        "rollout.advanced",
        "rollout.promoted",
    ]
    assert "agent.promoted" in await audit_actions(platform, "agent.promoted")


async def test_a_rollout_reaching_100_percent_passes_the_eval_gate(make_platform: Any) -> None:
    gate = {"suites": [{"suite": "qa"}]}
    platform, clock = await world(make_platform, bad_candidate=False, evaluation=gate)
    plan = {"steps_percent": (50, 100), "step_minutes": 10, "min_canary_runs": 2}
    with pytest.raises(Conflict) as refused:  # the gate already runs at start
        await start(platform, clock, **plan)
    assert refused.value.code == "eval_gate_failed"
    # Started while the stage was not gated (the settings changed since): 100 % still is.
    rollout_id = await start(platform, clock, gate_stages=[], **plan)
    await runs(platform, 20)
    clock.advance(seconds=11 * 60)
    outcomes = await evaluate_rollouts(
        platform.store,
        platform.governance,
        now=clock(),
        stages=platform.settings.governance.stages,
        evals=latest_eval,
    )
    assert outcomes == {rollout_id: "promotion_refused"}
    assert await staging_version(platform) == "0.1.0"
    async with platform.store.read("default") as session:
        status = await rollout_status(session, AGENT, tenant_id="default")
    assert status.rollout.status == "promotion_refused"
    assert "fails its eval gate" in (status.rollout.reason or "")
    assert "`corral eval run qa --agent repo-analyst@0.1.1`" in (status.rollout.reason or "")


async def test_a_canary_whose_error_rate_rises_is_rolled_back(make_platform: Any) -> None:
    platform, clock = await world(make_platform, bad_candidate=True)
    await start(platform, clock, steps_percent=(50, 100), step_minutes=30, min_canary_runs=5)
    first = await runs(platform, 30)
    failed = [run.id for run in first if run.agent_version == "0.1.1"]
    assert len(failed) >= 5
    async with platform.store.read("default") as session:
        statuses = await session.execute(select(RunRow.status).where(RunRow.id.in_(failed)))
        assert set(statuses.scalars()) == {RunStatus.BUDGET_EXCEEDED}

    clock.advance(seconds=60)  # well inside the step: a breach does not wait for it
    await platform.worker.run_heartbeat_jobs()  # what every worker heartbeat does

    assert await staging_version(platform) == "0.1.0"
    assert {run.agent_version for run in await runs(platform, 10)} == {"0.1.0"}
    async with platform.store.read("default") as session:
        status = await rollout_status(session, AGENT, tenant_id="default")
        decision = (
            await session.execute(
                select(ReleaseDecisionRow).where(ReleaseDecisionRow.decision == "rolled_back")
            )
        ).scalar_one()
    assert status.rollout.status == "rolled_back"
    assert "error_rate" in (status.rollout.reason or "")
    assert decision.details["metrics"]["candidate"]["error_rate"] == "1"
    assert await audit_actions(platform, "rollout.") == ["rollout.started", "rollout.rolled_back"]
    assert await evaluate(platform, clock) is None  # nothing active is left to evaluate


def canary_metrics(
    variant: str, *, finished: int = 20, errors: int = 0, cost: str = "0.010", p95: float = 2.0
) -> VariantMetrics:
    return VariantMetrics(
        variant, finished, finished, errors, finished - errors, Decimal(cost), p95
    )


@pytest.mark.parametrize(
    ("candidate", "breach"),
    [
        (canary_metrics("candidate", errors=2), "error_rate 0.100 > baseline 0.000"),
        (canary_metrics("candidate", p95=3.1), "p95_latency_seconds 3.100 > baseline 2.000"),
        (canary_metrics("candidate", cost="0.016"), "median_cost_usd 0.016 > baseline 0.010"),
    ],
    ids=["error_rate", "p95_latency", "median_cost"],
)
def test_a_canary_breaching_error_rate_latency_or_cost_is_named(
    candidate: VariantMetrics, breach: str
) -> None:
    """Margins: +5 points of error rate, +50 % p95 latency, +50 % median cost (the defaults)."""
    rollout = RolloutRow(
        steps=[25, 100],
        step_index=0,
        min_canary_runs=20,
        max_error_rate_increase=0.05,
        max_latency_increase_ratio=0.5,
        max_cost_increase_ratio=0.5,
    )
    baseline = canary_metrics("baseline")
    assert breaches(rollout, {"baseline": baseline, "candidate": candidate}) == (breach,)
    # Within the margins (or with too few canary runs yet) nothing is breached.
    within = canary_metrics("candidate", errors=1, p95=3.0, cost="0.015")
    assert breaches(rollout, {"baseline": baseline, "candidate": within}) == ()
    few = canary_metrics("candidate", finished=19, errors=19, p95=99, cost="9")
    assert breaches(rollout, {"baseline": baseline, "candidate": few}) == ()


async def test_a_rollout_is_refused_without_a_baseline_or_alongside_another(
    make_platform: Any,
) -> None:
    platform, clock = await world(make_platform, bad_candidate=False)
    with pytest.raises(InvalidRequest, match="increasing"):
        await start(platform, clock, steps_percent=(50, 25, 100))
    await register(platform, agent_document(AGENT, description="A draft.", status="draft"))
    async with platform.store.transaction("default") as session:
        with pytest.raises(InvalidRequest, match="is draft"):
            await start_rollout(
                session,
                RolloutPlan(agent_name=AGENT, version="0.1.2", stage=STAGE),
                tenant_id="default",
                actor=ADMIN,
                actor_roles=ROLES,
                now=clock(),
            )
    await start(platform, clock)
    with pytest.raises(Conflict, match="already splits"):
        await start(platform, clock)
    async with platform.store.transaction("default") as session:
        aborted = await abort_rollout(session, AGENT, tenant_id="default", actor=ADMIN, now=clock())
    assert aborted.status == "aborted"
    assert {run.agent_version for run in await runs(platform, 5)} == {"0.1.0"}
    assert await audit_actions(platform, "rollout.") == ["rollout.started", "rollout.aborted"]


async def test_a_shadow_step_runs_the_candidate_on_copies_and_never_returns_them(
    make_platform: Any,
) -> None:
    platform, clock = await world(make_platform, bad_candidate=False)
    await start(platform, clock, steps_percent=(50, 100), shadow=True, min_canary_runs=2)
    live = await runs(platform, 4)
    assert {run.agent_version for run in live} == {"0.1.0"}  # callers only get the baseline
    async with platform.store.read("default") as session:
        shadows = list(
            (await session.execute(select(RunRow).where(RunRow.stage == "shadow"))).scalars()
        )
        status = await rollout_status(session, AGENT, tenant_id="default")
    assert len(shadows) == 4
    assert {run.agent_version for run in shadows} == {"0.1.1"}
    assert {run.status for run in shadows} == {RunStatus.SUCCEEDED}
    assert status.share_percent == 0
    assert status.metrics["shadow"].finished == 4
    assert (status.shadow_compared, status.shadow_same) == (4, 4)  # both answer "ok"
    clock.advance(seconds=31 * 60)
    assert await evaluate(platform, clock) == "advanced"  # to the first live step
    await runs(platform, 10)
    async with platform.store.read("default") as session:
        count = len(
            (await session.execute(select(RunRow.id).where(RunRow.stage == "shadow"))).all()
        )
    assert count == 4  # no more shadow copies once the candidate takes live traffic


async def test_an_experiment_assigns_by_user_and_decides_on_significance(
    make_platform: Any,
) -> None:
    platform, clock = await world(make_platform, bad_candidate=True)
    async with platform.store.transaction("default") as session:
        experiment = await start_experiment(
            session,
            ExperimentPlan(
                name="prompt-b",
                agent_name=AGENT,
                stage=STAGE,
                variants=[("control", "0.1.0", 50), ("treatment", "0.1.1", 50)],
                key_by="user",
                metric="success",
                min_samples=5,
            ),
            tenant_id="default",
            actor=ADMIN,
            now=clock(),
        )
    arms = [
        SplitVariant("control", "", "0.1.0", 5_000),
        SplitVariant("treatment", "", "0.1.1", 5_000),
    ]
    # Six users that hash to each variant (the experiment id, the salt, is random).
    by_variant: dict[str, list[str]] = {"0.1.0": [], "0.1.1": []}
    for i in range(1_000):
        user = f"user:u{i}"
        version = choose_variant(arms, bucket_of(experiment.id, user)).version
        if len(by_variant[version]) < 6:
            by_variant[version].append(user)
    users = by_variant["0.1.0"] + by_variant["0.1.1"]
    assert len(users) == 12
    for user in users:
        got = {run.agent_version for run in await runs(platform, 2, user=user)}
        assert got == {choose_variant(arms, bucket_of(experiment.id, user)).version}
    async with platform.store.read("default") as session:
        status = await experiment_status(session, experiment.id, tenant_id="default", now=clock())
    assert status.metrics["control"].success_rate == 1.0
    assert status.metrics["treatment"].success_rate == 0.0
    assert status.verdict.stop and status.verdict.winner == "control"

    await platform.worker.run_heartbeat_jobs()  # the stop rule, as every heartbeat applies it
    async with platform.store.read("default") as session:
        decided = await experiment_status(session, experiment.id, tenant_id="default", now=clock())
    assert (decided.experiment.status, decided.experiment.winner) == ("decided", "control")
    async with platform.store.transaction("default") as session:
        assert await evaluate_experiments(session, now=clock()) == []  # nothing left running
    assert await audit_actions(platform, "experiment.") == [
        "experiment.started",
        "experiment.decided",
    ]
    assert {run.agent_version for run in await runs(platform, 3, user=users[0])} == {"0.1.0"}


async def test_an_experiment_waits_for_its_min_samples_then_ends_at_its_max_duration(
    make_platform: Any,
) -> None:
    platform, clock = await world(make_platform, bad_candidate=True)
    async with platform.store.transaction("default") as session:
        experiment = await start_experiment(
            session,
            ExperimentPlan(
                name="too-short",
                agent_name=AGENT,
                stage=STAGE,
                variants=[("control", "0.1.0", 50), ("treatment", "0.1.1", 50)],
                key_by="run",
                min_samples=100,
                max_duration=timedelta(hours=1),
            ),
            tenant_id="default",
            actor=ADMIN,
            now=clock(),
        )
    started = await runs(platform, 30)
    assert {run.agent_version for run in started} == {"0.1.0", "0.1.1"}
    async with platform.store.read("default") as session:
        status = await experiment_status(session, experiment.id, tenant_id="default", now=clock())
    # 100 % against 0 % is significant, but under 100 runs per variant nothing is decided.
    assert [c.significant for c in status.verdict.comparisons] == [True]
    assert not status.verdict.stop
    assert status.verdict.reason == "significant_but_under_min_samples"
    await platform.worker.run_heartbeat_jobs()
    async with platform.store.read("default") as session:
        going = await experiment_status(session, experiment.id, tenant_id="default", now=clock())
    assert going.experiment.status == "running"

    clock.advance(seconds=3601)
    await platform.worker.run_heartbeat_jobs()
    async with platform.store.read("default") as session:
        ended = await experiment_status(session, experiment.id, tenant_id="default", now=clock())
    assert (ended.experiment.status, ended.experiment.winner) == ("decided", None)
    assert ended.verdict.reason == "max_duration"
    assert await audit_actions(platform, "experiment.") == [
        "experiment.started",
        "experiment.decided",
    ]
    assert {run.agent_version for run in await runs(platform, 6)} == {"0.1.0"}  # split ended


async def test_an_experiment_keyed_by_session_gives_a_session_one_variant(
    make_platform: Any,
) -> None:
    platform, clock = await world(make_platform, bad_candidate=False)
    async with platform.store.transaction("default") as session:
        experiment = await start_experiment(
            session,
            ExperimentPlan(
                name="by-session",
                agent_name=AGENT,
                stage=STAGE,
                variants=[("control", "0.1.0", 50), ("treatment", "0.1.1", 50)],
                key_by="session",
            ),
            tenant_id="default",
            actor=ADMIN,
            now=clock(),
        )
    assert experiment.key_by == "session"
    arms = [
        SplitVariant("control", "", "0.1.0", 5_000),
        SplitVariant("treatment", "", "0.1.1", 5_000),
    ]

    def expected(key: str) -> str:
        return choose_variant(arms, bucket_of(experiment.id, key)).version

    # Three sessions that hash to each variant (the experiment id, the salt, is random).
    sessions: dict[str, list[str]] = {"0.1.0": [], "0.1.1": []}
    for i in range(1_000):
        name = f"chat:{i}"
        if len(sessions[expected(name)]) < 3:
            sessions[expected(name)].append(name)

    async def start_in(session_id: str | None, user: str) -> RunRow:
        return await start_run(
            platform.store,
            tenant_id="default",
            agent_name=AGENT,
            task="Question",
            requested_by=user,
            requester_roles=ROLES,
            stage=STAGE,
            session_id=session_id,
        )

    for session_id in sessions["0.1.0"] + sessions["0.1.1"]:
        # Different users and run ids, one session: one variant, the session's.
        started = [await start_in(session_id, f"user:u{i}") for i in range(4)]
        assert {run.agent_version for run in started} == {expected(session_id)}
        assert {run.session_id for run in started} == {session_id}
    # A run without a session falls back to its run id, as key_by run does.
    loose = [await start_in(None, ADMIN) for _ in range(20)]
    assert all(run.session_id is None for run in loose)
    assert all(run.agent_version == expected(run.id) for run in loose)
    assert {run.agent_version for run in loose} == {"0.1.0", "0.1.1"}
    async with platform.store.read("default") as session:
        stored = await session.get(RunRow, loose[0].id)
        assert stored is not None and stored.session_id is None
    with pytest.raises(InvalidRequest, match="1 to 128 characters"):
        await start_in("a session with spaces", ADMIN)
    with pytest.raises(InvalidRequest, match="1 to 128 characters"):
        await start_in("x" * 129, ADMIN)


async def test_the_release_tables_are_what_the_migration_made(make_platform: Any) -> None:
    platform = await make_platform()
    names = ("traffic_", "experiments", "rollouts", "release_decisions")

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [d for d in found if any(name in d for name in names)]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_the_release_heartbeat_runs_at_its_own_interval(settings: Settings) -> None:
    """``releases.heartbeat_seconds`` paces the evaluator, not the approvals' sweep interval."""
    assert ReleaseSettings().heartbeat_seconds == 5.0  # the effective interval until now
    tuned = settings.model_copy(update={"releases": ReleaseSettings(heartbeat_seconds=7.5)})
    platform = Platform(tuned)
    try:
        intervals = [job.interval_seconds for job in platform.worker._jobs]
        assert 7.5 in intervals
        assert platform.worker.approval_sweep_seconds not in intervals
    finally:
        await platform.close()
