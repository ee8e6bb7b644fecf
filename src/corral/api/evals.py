"""Routes: ``/v1/evals`` (eval runs of suites on agent versions, compare, Inspect export)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, requires
from corral.api._schemas import usd_text
from corral.evals import (
    MAX_REPEAT,
    Comparison,
    EvalReport,
    Interval,
    compare_versions,
    gateway_judge,
    get_eval,
    get_suite_version,
    grade_eval,
    inspect_log,
    latest_eval,
    list_evals,
    start_eval,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["evals"])

USD = Annotated[Decimal, PlainSerializer(usd_text, return_type=str)]
_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_VERSION = r"^\d+\.\d+\.\d+$"


class EvalCreate(BaseModel):
    """An eval to start: a suite (version) on an agent version."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field(pattern=_NAME)
    suite_version: str | None = Field(None, pattern=_VERSION)
    agent: str | None = Field(None, pattern=_NAME, description="Default: the suite's agent.")
    version: str | None = Field(None, pattern=_VERSION, description="Default: the latest.")
    repeat: int = Field(1, ge=1, le=MAX_REPEAT, description="Runs per case.")
    workspace: str | None = Field(
        None, description="Directory on the server for cases (and a suite) naming none."
    )


class GraderResultOut(BaseModel):
    """One grader's verdict on one case run."""

    name: str
    type: str
    passed: bool
    score: float
    detail: str
    cost_usd: USD


class CaseResultOut(BaseModel):
    """One run of one case."""

    case: str
    repeat_index: int
    run_id: str | None
    status: str
    passed: bool | None
    run_status: str | None
    output: str | None
    error: str | None
    cost_usd: USD
    judge_cost_usd: USD
    latency_seconds: float | None
    policy_violations: int
    graders: list[GraderResultOut]


class EvalOut(BaseModel):
    """An eval run: what ran, its status, metrics once completed, and its results."""

    id: str
    suite: str
    suite_version: str
    suite_digest: str
    agent: str
    agent_version: str
    agent_digest: str
    repeat: int
    status: str
    passed: bool | None
    summary: dict[str, Any] | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    cases: list[CaseResultOut] = []


class IntervalOut(BaseModel):
    """``b - a`` and its 95% bootstrap interval."""

    delta: float
    low: float
    high: float


class CaseDeltaOut(BaseModel):
    """One case's pass rate in each eval; ``regression`` when ``b`` passes it less often."""

    case: str
    a_pass_rate: float | None
    b_pass_rate: float | None
    regression: bool


class ComparisonOut(BaseModel):
    """Version ``b`` against version ``a`` on a suite."""

    suite: str
    a_eval_id: str
    b_eval_id: str
    cases: list[CaseDeltaOut]
    success_rate: IntervalOut | None
    median_cost_usd: IntervalOut | None
    p95_latency_seconds: IntervalOut | None


def _eval_out(report: EvalReport, *, cases: bool = True) -> EvalOut:
    run = report.run
    return EvalOut(
        id=run.id,
        suite=run.suite_name,
        suite_version=run.suite_version,
        suite_digest=run.suite_digest,
        agent=run.agent_name,
        agent_version=run.agent_version,
        agent_digest=run.agent_digest,
        repeat=run.repeat,
        status=run.status,
        passed=run.passed,
        summary=run.summary,
        created_by=run.created_by,
        created_at=run.created_at,
        finished_at=run.finished_at,
        cases=[
            CaseResultOut(
                case=c.case_name,
                repeat_index=c.repeat_index,
                run_id=c.run_id,
                status=c.status,
                passed=c.passed,
                run_status=c.run_status,
                output=c.output,
                error=c.error,
                cost_usd=c.cost_usd,
                judge_cost_usd=c.judge_cost_usd,
                latency_seconds=c.latency_seconds,
                policy_violations=c.policy_violations,
                graders=[
                    GraderResultOut(
                        name=g.grader_name,
                        type=g.grader_type,
                        passed=g.passed,
                        score=g.score,
                        detail=g.detail,
                        cost_usd=g.cost_usd,
                    )
                    for g in report.graders.get(c.id, [])
                ],
            )
            for c in (report.cases if cases else [])
        ],
    )


def _interval(value: Interval | None) -> IntervalOut | None:
    return None if value is None else IntervalOut(delta=value.delta, low=value.low, high=value.high)


def _comparison_out(comparison: Comparison) -> ComparisonOut:
    return ComparisonOut(
        suite=comparison.suite,
        a_eval_id=comparison.a_eval_id,
        b_eval_id=comparison.b_eval_id,
        cases=[
            CaseDeltaOut(
                case=c.case,
                a_pass_rate=c.a_pass_rate,
                b_pass_rate=c.b_pass_rate,
                regression=c.regression,
            )
            for c in comparison.cases
        ],
        success_rate=_interval(comparison.success_rate),
        median_cost_usd=_interval(comparison.median_cost_usd),
        p95_latency_seconds=_interval(comparison.p95_latency_seconds),
    )


@router.post("/evals", response_model=EvalOut, status_code=201)
async def post_eval(
    body: EvalCreate, platform: PlatformDep, caller: Annotated[Caller, requires("runs.create")]
) -> EvalOut:
    """Start an eval: one run per case and repeat, in stage ``eval`` (or ``eval-sandbox``).

    Poll ``POST /v1/evals/{id}/grade`` until ``status`` is ``completed``.
    """
    row = await start_eval(
        platform.store,
        tenant_id=caller.tenant_id,
        suite=body.suite,
        suite_version=body.suite_version,
        agent=body.agent,
        version=body.version,
        repeat=body.repeat,
        workspace=body.workspace,
        requested_by=caller.principal,
        requester_roles=caller.roles,
        workspaces=platform.workspaces,
        governance=platform.governance,
        quotas=platform.quotas,
    )
    platform.worker.wake()
    async with platform.store.read(caller.tenant_id) as session:
        return _eval_out(await get_eval(session, row.id, tenant_id=caller.tenant_id))


@router.post("/evals/{eval_id}/grade", response_model=EvalOut)
async def post_grade(
    eval_id: str, platform: PlatformDep, caller: Annotated[Caller, requires("runs.create")]
) -> EvalOut:
    """Grade the case runs that ended since the last call; complete the eval when all did."""
    report = await grade_eval(
        platform.store,
        eval_id,
        tenant_id=caller.tenant_id,
        actor=caller.principal,
        judge=gateway_judge(
            platform.models,
            caller.tenant_id,
            governance=platform.governance,
            store=platform.store,
            principal=caller.principal,
            roles=caller.roles,
            prices=platform.settings.quotas.model_prices,
        ),
    )
    return _eval_out(report)


@router.get("/evals", response_model=list[EvalOut])
async def get_evals(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("runs.read")],
    agent: Annotated[str | None, Query(pattern=_NAME)] = None,
    suite: Annotated[str | None, Query(pattern=_NAME)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[EvalOut]:
    """Evals, newest first (without their case results)."""
    rows = await list_evals(
        session, tenant_id=caller.tenant_id, agent=agent, suite=suite, limit=limit
    )
    return [_eval_out(EvalReport(row, [], {}), cases=False) for row in rows]


@router.get("/evals/compare", response_model=ComparisonOut)
async def get_comparison(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("runs.read")],
    agent: Annotated[str, Query(pattern=_NAME)],
    a: Annotated[str, Query(pattern=_VERSION, description="The baseline version.")],
    b: Annotated[str, Query(pattern=_VERSION, description="The candidate version.")],
    suite: Annotated[str, Query(pattern=_NAME)],
) -> ComparisonOut:
    """The latest completed evals of two versions on a suite: regressions and metric deltas."""
    comparison = await compare_versions(session, agent, a, b, suite, tenant_id=caller.tenant_id)
    return _comparison_out(comparison)


@router.get("/evals/gate", response_model=EvalOut | None)
async def get_gate(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("runs.read")],
    agent: Annotated[str, Query(pattern=_NAME)],
    digest: Annotated[str, Query(pattern=r"^sha256:[0-9a-f]{64}$")],
    suite: Annotated[str, Query(pattern=_NAME)],
) -> EvalOut | None:
    """The latest completed eval of exactly this agent digest on the suite, or ``null``."""
    result = await latest_eval(session, agent, digest, suite, tenant_id=caller.tenant_id)
    if result is None:
        return None
    return _eval_out(await get_eval(session, result.eval_id, tenant_id=caller.tenant_id))


@router.get("/evals/{eval_id}", response_model=EvalOut)
async def get_one(
    eval_id: str, session: ReadSessionDep, caller: Annotated[Caller, requires("runs.read")]
) -> EvalOut:
    """An eval with its results per case run and grader."""
    return _eval_out(await get_eval(session, eval_id, tenant_id=caller.tenant_id))


@router.get("/evals/{eval_id}/inspect")
async def get_inspect_log(
    eval_id: str, session: ReadSessionDep, caller: Annotated[Caller, requires("runs.read")]
) -> dict[str, Any]:
    """The eval in Inspect's eval log format (open it with ``inspect view``)."""
    report = await get_eval(session, eval_id, tenant_id=caller.tenant_id)
    _, suite = await get_suite_version(
        session, report.run.suite_name, report.run.suite_version, tenant_id=caller.tenant_id
    )
    return inspect_log(report, suite)
