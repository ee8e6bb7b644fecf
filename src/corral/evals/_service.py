"""Eval runs: start a suite on an agent version through the real runtime, grade, read back.

An eval run is one agent run per case and repeat, started as any run is (policy, quotas, kill
switches, audit) in stage ``eval`` (policy denies tools with side effects) or, for a case with
a sandbox, ``eval-sandbox`` (they may run, inside a fresh copy of the case's files). Grading is
pull-based: :func:`grade_eval` grades the case runs that have ended since the last call and
completes the eval once none is left, so any API replica can drive it and none holds state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import EvalCase, EvalSuite
from corral.errors import CorralError, InvalidRequest, NotFound
from corral.evals._graders import (
    NOT_STARTED,
    Judge,
    Observation,
    ObservedCall,
    Verdict,
    grade,
    grader_names,
)
from corral.evals._metrics import Summary, summarize
from corral.evals._suites import get_suite_version
from corral.evals._tables import EvalCaseResultRow, EvalGraderResultRow, EvalRunRow
from corral.policy import Governance
from corral.registry import get_agent_version
from corral.runtime import (
    PAUSED_STATUSES,
    TERMINAL_STATUSES,
    RunRow,
    Workspaces,
    cancel_run,
    get_run,
    list_steps,
    start_run,
)
from corral.store import Store, new_id, utcnow
from corral.tenancy import Quotas

__all__ = [
    "EVAL_SANDBOX_STAGE",
    "EVAL_STAGE",
    "MAX_REPEAT",
    "EvalReport",
    "get_eval",
    "grade_eval",
    "list_evals",
    "sandbox_root",
    "start_eval",
]

EVAL_STAGE = "eval"
"""The stage eval runs run in: policy denies tools with side effects."""
EVAL_SANDBOX_STAGE = "eval-sandbox"
"""The stage of eval runs in a sandbox the suite provides: side effects stay in the sandbox."""
MAX_REPEAT = 20
"""Most runs per case in one eval."""
ERROR_REASONS: Final = frozenset({"model_error", "internal_error"})
"""Terminal reasons of a case run that errored (the model provider or the platform failed):
such a run shows nothing of the agent version, and an eval with one does not pass."""


@dataclass(frozen=True)
class EvalReport:
    """An eval run with its case results and, per case result id, its grader results."""

    run: EvalRunRow
    cases: list[EvalCaseResultRow]
    graders: dict[str, list[EvalGraderResultRow]]

    @property
    def summary(self) -> Summary | None:
        """The metrics, once the eval completed."""
        return None if self.run.summary is None else Summary.from_json(self.run.summary)


async def start_eval(
    store: Store,
    *,
    tenant_id: str,
    suite: str,
    agent: str | None,
    version: str | None,
    requested_by: str,
    requester_roles: Iterable[str],
    workspaces: Workspaces,
    repeat: int = 1,
    suite_version: str | None = None,
    workspace: str | None = None,
    governance: Governance | None = None,
    quotas: Quotas | None = None,
) -> EvalRunRow:
    """Start an eval: one agent run per case and repeat, each graded once it ends.

    Args:
        store: The store.
        tenant_id: The requester's tenant.
        suite: The eval suite's name.
        agent: The agent (``None``: the suite's ``spec.agent``).
        version: The agent version (``None``: the latest).
        requested_by: Principal starting the eval (each run's requester).
        requester_roles: Their roles in the tenant.
        workspaces: Decides which directories the tenant's runs may use.
        repeat: Runs per case, 1..:data:`MAX_REPEAT`.
        suite_version: The suite version (``None``: the latest).
        workspace: The directory for cases naming none (and the suite naming none).
        governance: Decides ``agent.invoke``; ``None``: no policy check.
        quotas: Tenant quotas; each run counts.

    Returns:
        The eval run (``running``), committed; a case whose run could not start is graded
        failed at once, with the reason in its ``error``.

    Raises:
        NotFound: unknown suite, suite version, agent or agent version.
        InvalidRequest: no agent given or named by the suite; ``repeat`` out of range.
    """
    if not 1 <= repeat <= MAX_REPEAT:
        raise InvalidRequest(f"repeat must be 1 to {MAX_REPEAT}, got {repeat}.")
    async with store.transaction(tenant_id) as session:
        suite_row, contract = await get_suite_version(
            session, suite, suite_version, tenant_id=tenant_id
        )
        agent = agent or contract.spec.agent
        if agent is None:
            raise InvalidRequest(
                f"EvalSuite {suite!r} names no agent; pass one (`corral eval run {suite} "
                "--agent NAME@VERSION`)."
            )
        _, agent_version = await get_agent_version(session, agent, version, tenant_id=tenant_id)
        row = EvalRunRow(
            id=new_id("eval"),
            tenant_id=tenant_id,
            suite_name=suite,
            suite_version=suite_row.version,
            suite_digest=suite_row.digest,
            agent_name=agent,
            agent_version=agent_version.version,
            agent_digest=agent_version.digest,
            repeat=repeat,
            status="running",
            created_by=requested_by,
            created_at=utcnow(),
        )
        session.add(row)
        await session.flush()
    starter = _Starter(
        store,
        row,
        contract,
        requested_by,
        frozenset(requester_roles),
        workspaces,
        workspace,
        governance,
        quotas,
    )
    for case in contract.spec.cases:
        for index in range(repeat):
            await starter.start(case, index)
    return row


@dataclass(frozen=True)
class _Starter:
    store: Store
    eval_run: EvalRunRow
    suite: EvalSuite
    requested_by: str
    roles: frozenset[str]
    workspaces: Workspaces
    workspace: str | None
    governance: Governance | None
    quotas: Quotas | None

    async def start(self, case: EvalCase, index: int) -> None:
        tenant_id = self.eval_run.tenant_id
        run_id = error = None
        try:
            workspace = self._workspace(case, index)
            run = await start_run(
                self.store,
                tenant_id=tenant_id,
                agent_name=self.eval_run.agent_name,
                task=case.task,
                requested_by=self.requested_by,
                requester_roles=self.roles,
                stage=EVAL_SANDBOX_STAGE if case.sandboxed else EVAL_STAGE,
                version=self.eval_run.agent_version,
                workspace=workspace,
                workspaces=self.workspaces,
                governance=self.governance,
                quotas=self.quotas,
            )
            run_id = run.id
        except CorralError as exc:
            error = exc.message
        except OSError as exc:  # building the sandbox failed (disk full, unreadable fixture)
            error = f"Could not build the case's sandbox: {exc.strerror or exc}."
        async with self.store.transaction(tenant_id) as session:
            row = EvalCaseResultRow(
                id=new_id("ecase"),
                tenant_id=tenant_id,
                eval_run_id=self.eval_run.id,
                case_name=case.name,
                repeat_index=index,
                run_id=run_id,
                status="pending",
                error=error,
                cost_usd=Decimal(0),
                judge_cost_usd=Decimal(0),
                policy_violations=0,
            )
            session.add(row)

    def _workspace(self, case: EvalCase, index: int) -> str | None:
        """The run's workspace: the case's, the suite's or the eval's; or a fresh sandbox."""
        tenant_id = self.eval_run.tenant_id
        if not case.sandboxed:
            return case.workspace or self.suite.spec.workspace or self.workspace
        self.workspaces.ensure_builtin_root(tenant_id)
        sandbox = (
            sandbox_root(self.workspaces, tenant_id, self.eval_run.id) / f"{case.name}-{index}"
        )
        if case.fixture is not None:
            # The tenant must be allowed to read the fixture itself, as a workspace.
            source = self.workspaces.resolve(tenant_id, case.fixture)
            shutil.copytree(source, sandbox, symlinks=True)
        sandbox.mkdir(parents=True, exist_ok=True)
        for relative, content in case.files.items():
            target = (sandbox / relative).resolve()
            if not target.is_relative_to(sandbox.resolve()):
                raise InvalidRequest(f"Case {case.name!r}: file {relative!r} leaves the sandbox.")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        return str(sandbox)


async def grade_eval(
    store: Store, eval_id: str, *, tenant_id: str, actor: str, judge: Judge | None = None
) -> EvalReport:
    """Grade the case runs that have ended; complete the eval when none is left.

    A run paused for an approval or in doubt counts as ended with a policy violation, and is
    cancelled (an eval never waits for a person). Safe to call concurrently: a case result
    is graded once (the first grader to commit wins).

    Args:
        store: The store.
        eval_id: The eval run.
        tenant_id: The caller's tenant.
        actor: Who grades (the audit actor of cancelled runs).
        judge: Asks a model for ``judge`` graders (their cost is counted in the result).

    Returns:
        The eval as it now stands.

    Raises:
        NotFound: no such eval in the tenant.
    """
    report = await _read_report(store, eval_id, tenant_id)
    if report.run.status != "running":
        return report
    _, suite = await _suite_of(store, report.run, tenant_id)
    cases = {case.name: case for case in suite.spec.cases}
    for result in report.cases:
        if result.status != "pending" or result.case_name not in cases:
            continue
        seen = await _observe(store, result, tenant_id, actor)
        if seen is not None:
            case = cases[result.case_name]
            graders = [*suite.spec.graders, *case.graders]
            verdicts = [
                await grade(g, case, seen, name=name, judge=judge)
                for g, name in zip(graders, grader_names(graders), strict=True)
            ]
            await _store_grades(store, result, seen, verdicts, tenant_id)
    await _complete_if_done(store, eval_id, suite, tenant_id)
    return await _read_report(store, eval_id, tenant_id)


async def _suite_of(store: Store, run: EvalRunRow, tenant_id: str) -> tuple[object, EvalSuite]:
    async with store.read(tenant_id) as session:
        return await get_suite_version(
            session, run.suite_name, run.suite_version, tenant_id=tenant_id
        )


async def _observe(
    store: Store, result: EvalCaseResultRow, tenant_id: str, actor: str
) -> Observation | None:
    """What the case run did, or ``None`` while it has not ended."""
    if result.run_id is None:
        return Observation(task="", output=None, run_status=NOT_STARTED)
    async with store.read(tenant_id) as session:
        run = await get_run(session, result.run_id, tenant_id=tenant_id)
        steps = await list_steps(session, result.run_id, tenant_id=tenant_id)
    paused = run.status in PAUSED_STATUSES
    if run.status not in TERMINAL_STATUSES and not paused:
        return None
    if paused:
        try:
            await cancel_run(store, run.id, tenant_id=tenant_id, actor=actor)
        except CorralError:
            pass  # it ended meanwhile; graded as it was seen
    calls = tuple(
        ObservedCall(call.tool_name, dict(call.arguments), str(call.status))
        for _, step_calls in steps
        for call in step_calls
    )
    started, finished = run.started_at, run.finished_at or utcnow()
    return Observation(
        task=run.task,
        output=run.output,
        run_status=str(run.status),
        tool_calls=calls,
        cost_usd=run.cost_usd,
        latency_seconds=None if started is None else (finished - started).total_seconds(),
        policy_violations=sum(1 for c in calls if c.status == "DENIED") + int(paused),
    )


async def _store_grades(
    store: Store,
    result: EvalCaseResultRow,
    seen: Observation,
    verdicts: list[Verdict],
    tenant_id: str,
) -> None:
    async with store.transaction(tenant_id) as session:
        claimed = await session.execute(
            update(EvalCaseResultRow)
            .where(EvalCaseResultRow.id == result.id, EvalCaseResultRow.status == "pending")
            .values(
                status="graded",
                passed=all(v.passed for v in verdicts),
                run_status=seen.run_status,
                output=seen.output,
                cost_usd=seen.cost_usd,
                judge_cost_usd=sum((v.cost_usd for v in verdicts), Decimal(0)),
                latency_seconds=seen.latency_seconds,
                policy_violations=seen.policy_violations,
                graded_at=utcnow(),
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return  # graded by another caller meanwhile
        for index, verdict in enumerate(verdicts):
            session.add(
                EvalGraderResultRow(
                    id=new_id("egrade"),
                    tenant_id=tenant_id,
                    case_result_id=result.id,
                    eval_run_id=result.eval_run_id,
                    grader_index=index,
                    grader_name=verdict.name,
                    grader_type=verdict.type,
                    passed=verdict.passed,
                    score=verdict.score,
                    detail=verdict.detail,
                    cost_usd=verdict.cost_usd,
                )
            )


async def _complete_if_done(store: Store, eval_id: str, suite: EvalSuite, tenant_id: str) -> None:
    async with store.transaction(tenant_id) as session:
        cases = list(
            await session.scalars(
                select(EvalCaseResultRow).where(EvalCaseResultRow.eval_run_id == eval_id)
            )
        )
        if any(c.status == "pending" for c in cases):
            return
        run_ids = [c.run_id for c in cases if c.run_id is not None]
        reasons = await session.scalars(
            select(RunRow.terminal_reason).where(RunRow.id.in_(run_ids))
        )
        errored = sum(1 for reason in reasons if reason in ERROR_REASONS)
        summary = summarize(
            [
                (
                    bool(c.passed),
                    c.policy_violations,
                    c.cost_usd,
                    c.latency_seconds,
                    c.judge_cost_usd,
                )
                for c in cases
            ],
            suite.spec.thresholds,
            errored_runs=errored,
        )
        await session.execute(
            update(EvalRunRow)
            .where(EvalRunRow.id == eval_id, EvalRunRow.status == "running")
            .values(
                status="completed",
                passed=summary.passed,
                summary=summary.to_json(),
                finished_at=utcnow(),
            )
        )


async def _read_report(store: Store, eval_id: str, tenant_id: str) -> EvalReport:
    async with store.read(tenant_id) as session:
        return await get_eval(session, eval_id, tenant_id=tenant_id)


async def get_eval(session: AsyncSession, eval_id: str, *, tenant_id: str) -> EvalReport:
    """An eval run with its case and grader results.

    Raises:
        NotFound: no such eval in the tenant.
    """
    run = (
        await session.execute(
            select(EvalRunRow).where(EvalRunRow.id == eval_id, EvalRunRow.tenant_id == tenant_id)
        )
    ).scalar_one_or_none()
    if run is None:
        raise NotFound(
            f"Eval {eval_id!r} not found; `corral eval list` lists this tenant's evals.",
            kind="eval",
            name=eval_id,
        )
    cases = list(
        await session.scalars(
            select(EvalCaseResultRow)
            .where(EvalCaseResultRow.eval_run_id == eval_id)
            .order_by(EvalCaseResultRow.case_name, EvalCaseResultRow.repeat_index)
        )
    )
    graders: dict[str, list[EvalGraderResultRow]] = {c.id: [] for c in cases}
    for row in await session.scalars(
        select(EvalGraderResultRow)
        .where(EvalGraderResultRow.eval_run_id == eval_id)
        .order_by(EvalGraderResultRow.grader_index)
    ):
        graders.setdefault(row.case_result_id, []).append(row)
    return EvalReport(run, cases, graders)


async def list_evals(
    session: AsyncSession,
    *,
    tenant_id: str,
    agent: str | None = None,
    suite: str | None = None,
    limit: int = 50,
) -> list[EvalRunRow]:
    """The tenant's evals, newest first, optionally of one agent and/or suite."""
    query = select(EvalRunRow).where(EvalRunRow.tenant_id == tenant_id)
    if agent is not None:
        query = query.where(EvalRunRow.agent_name == agent)
    if suite is not None:
        query = query.where(EvalRunRow.suite_name == suite)
    query = query.order_by(EvalRunRow.created_at.desc(), EvalRunRow.id.desc()).limit(limit)
    return list(await session.scalars(query))


def sandbox_root(workspaces: Workspaces, tenant_id: str, eval_id: str) -> Path:
    """Where an eval's sandboxes live: ``{home}/workspaces/{tenant}/evals/{eval_id}``."""
    return workspaces.builtin_root(tenant_id) / "evals" / eval_id
