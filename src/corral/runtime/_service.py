"""Creating and reading runs (the control side of the runtime; workers execute them)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import instance_dict

from corral.audit import AuditRecord, append_event, append_events
from corral.contracts import Agent
from corral.errors import (
    Forbidden,
    InvalidRequest,
    KillSwitchEngaged,
    NotFound,
    PolicyDenied,
    PolicyRefused,
)
from corral.observability import SpanRow, new_trace_id
from corral.policy import (
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyDecision,
    PolicyEngine,
    PolicyRequest,
    agent_entity,
    decision_row,
    insert_decisions,
    principal_ref,
)
from corral.registry import (
    AgentRow,
    AgentVersionRow,
    StageBindingRow,
    TrafficSplitRow,
    assign_version,
    get_agent,
    get_agent_version,
)
from corral.runtime._assign import assigned_version, record_variant
from corral.runtime._persist import active_kill_switch, agent_spec
from corral.runtime._status import RUN_STATUSES, TERMINAL_STATUSES, RunStatus
from corral.runtime._tables import RunEventRow, RunRow, StepRow, ToolCallRow
from corral.runtime._workspaces import Workspaces
from corral.store import Store, execute_direct, insert_rows, new_id, utcnow
from corral.tenancy import Quotas, check_run_start, permits

__all__ = [
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "create_run",
    "get_run",
    "list_run_spans",
    "list_runs",
    "list_steps",
    "session_id_problem",
    "start_run",
]


# What a run's session_id may be: 1 to 128 letters, digits, '.', '_', ':' or '-'.
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def session_id_problem(session_id: str) -> str | None:
    """Why ``session_id`` is not a valid run session id, or ``None`` when it is.

    Valid: 1 to 128 characters, each a letter, digit, ``.``, ``_``, ``:`` or ``-``. The
    message says what to send instead.
    """
    if _SESSION_ID.fullmatch(session_id):
        return None
    return (
        f"session_id {session_id[:40]!r} is not valid: send 1 to 128 characters of letters, "
        "digits, '.', '_', ':' or '-' (e.g. 'chat-42'), or omit it."
    )


def _check_session_id(session_id: str | None) -> None:
    problem = None if session_id is None else session_id_problem(session_id)
    if problem is not None:
        raise InvalidRequest(problem)


async def start_run(
    store: Store,
    *,
    tenant_id: str,
    agent_name: str,
    task: str,
    requested_by: str,
    requester_roles: Iterable[str],
    requester_groups: Iterable[str] = (),
    stage: str = "dev",
    version: str | None = None,
    model: str | None = None,
    workspace: str | None = None,
    workspaces: Workspaces | None = None,
    governance: Governance | None = None,
    quotas: Quotas | None = None,
    session_id: str | None = None,
) -> RunRow:
    """Start a run for a principal: what ``POST /v1/agents/{name}/runs`` does, in one call.

    Checks that the requester may run in ``stage`` (``production`` needs the
    ``runs.create.production`` permission: operators, platform admins), then in one
    transaction the tenant's run quotas and :func:`create_run` (policy, kill switches, the
    ``QUEUED`` run and its audit event). A refusal by policy is stored (the decision and an
    ``agent.invoke`` audit event, outcome ``denied``) in a transaction of its own after the
    run's transaction rolled back, then raised. Workers are not woken: the caller does that.

    Args:
        store: The store.
        tenant_id: Tenant of the requester.
        agent_name: Registered agent to run.
        task: The task, in words (1..100,000 characters).
        requested_by: Principal asking for the run.
        requester_roles: The requester's roles in the tenant (permissions, Cedar
            ``principal.roles``).
        requester_groups: A user requester's groups (Cedar ``principal.groups``).
        stage: Release stage whose bound version runs.
        version: An explicit agent version, only in stage ``dev``.
        model: ``provider/model`` to use instead of the agent's default.
        workspace: Absolute directory the ``fs.*`` tools may read, or ``None``.
        workspaces: Decides which workspaces the tenant may use; required with ``workspace``.
        governance: Decides ``agent.invoke``; ``None``: no policy check.
        quotas: The tenant quotas (``runs_per_day``, ``concurrent_runs``); ``None``: none.
        session_id: The caller's session (1 to 128 of ``A-Za-z0-9._:-``), stored on the run;
            an experiment keyed by session gives one session's runs the same variant.
            ``None``: no session (such an experiment keys the run by its id).

    Returns:
        The ``QUEUED`` run, committed.

    Raises:
        Forbidden: ``production`` without the ``runs.create.production`` permission.
        QuotaExceeded: ``runs_per_day`` or ``concurrent_runs`` is used up (with the seconds
            until it resets).
        PolicyRefused: policy does not allow ``agent.invoke``; the decision is stored.
        NotFound, PolicyDenied, KillSwitchEngaged, InvalidRequest: as :func:`create_run`.
    """
    _check_session_id(session_id)
    roles = frozenset(requester_roles)
    if stage == "production" and not permits(roles, "runs.create.production"):
        raise Forbidden(
            f"{requested_by} may run agents in dev and staging only; running in 'production' "
            "needs the operator role. Pass `stage` (`corral run --stage dev`).",
            code="permission_denied",
        )
    # What does not need the transaction is ready before it: the workspace resolved (an
    # error is raised where create_run would raise it, after the quota check), the policy
    # engine and the quota limits from their tenant caches.
    resolved: str | BaseException | None = None
    if workspace is not None:
        if workspaces is None:
            raise ValueError("start_run(workspace=...) needs workspaces= to check it")
        try:
            resolved = str(workspaces.resolve(tenant_id, workspace))
        except (PolicyDenied, InvalidRequest) as error:
            resolved = error
    limits = await quotas.limits(tenant_id) if quotas is not None else None
    invoke = None
    if governance is not None:
        invoke = _Invoke(
            governance,
            await governance.engine(tenant_id),
            governance.principal_entity(
                requested_by, tenant_id, roles=roles, groups=requester_groups
            ),
        )
    start = functools.partial(
        _start_on_writer,
        request=_StartRequest(
            tenant_id=tenant_id,
            agent_name=agent_name,
            task=task,
            requested_by=requested_by,
            stage=stage,
            version=version,
            model=model,
            workspace=resolved,
            session_id=session_id,
        ),
        limits=limits,
        invoke=invoke,
    )
    try:
        return await store.run_sync(start, tenant_id)
    except _InvokeRefused as refused:
        # The refusal is evidence too: stored now that the run's transaction rolled back.
        await store.run_sync(
            functools.partial(
                _record_refusal, row=refused.row, tenant_id=tenant_id, audit=refused.audit
            ),
            tenant_id,
        )
        raise
    except _VersionMissing:
        # Raise the registry's own NotFound (it lists what exists).
        async with store.read(tenant_id) as session:
            await _version_for_stage(session, agent_name, stage, version, tenant_id=tenant_id)
        raise NotFound(  # removed between the two reads
            f"Agent {agent_name!r} not found; register it with `corral apply -f FILE`.",
            kind="agent",
            name=agent_name,
        ) from None


@dataclass(frozen=True)
class _StartRequest:
    tenant_id: str
    agent_name: str
    task: str
    requested_by: str
    stage: str
    version: str | None
    model: str | None
    workspace: str | BaseException | None
    session_id: str | None = None


@dataclass(frozen=True)
class _Invoke:
    """What deciding ``agent.invoke`` on the writer needs: no store read, no event loop."""

    governance: Governance
    engine: PolicyEngine
    requester: Entity


class _VersionMissing(Exception):
    """The agent, its stage binding or the version asked for is not in the store."""


# Stages that run any version asked for by number (drafts included): ``dev``, and the eval
# stages (corral.evals runs the exact version under evaluation there).
_EXPLICIT_VERSION_STAGES = frozenset({"dev", "eval", "eval-sandbox"})

_AGENTS = cast(Table, AgentRow.__table__)
_VERSIONS = cast(Table, AgentVersionRow.__table__)
_BINDINGS = cast(Table, StageBindingRow.__table__)
_SPLITS = cast(Table, TrafficSplitRow.__table__)
_RUNS = cast(Table, RunRow.__table__)
_RUN_EVENTS = cast(Table, RunEventRow.__table__)
_RUN_COLUMNS = tuple(column.key for column in _RUNS.columns)

_EXPLICIT_VERSION = (
    select(
        _AGENTS.c.id,
        _AGENTS.c.status,
        _VERSIONS.c.id.label("version_id"),
        _VERSIONS.c.version,
        _VERSIONS.c.digest,
    )
    .join(_VERSIONS, _VERSIONS.c.agent_id == _AGENTS.c.id)
    .where(
        _AGENTS.c.tenant_id == bindparam("b_tenant"),
        _AGENTS.c.name == bindparam("b_agent"),
        _VERSIONS.c.version == bindparam("b_version"),
    )
)
# The stage's version and, in the same statement, whether a traffic split is active on the
# agent's stage (one probe of its unique (agent_id, stage) index): a run of an agent with no
# experiment or rollout costs no extra read, and no cache can be stale across processes.
_STAGE_VERSION = (
    select(
        _AGENTS.c.id,
        _AGENTS.c.status,
        _VERSIONS.c.id.label("version_id"),
        _VERSIONS.c.version,
        _VERSIONS.c.digest,
        _SPLITS.c.id.label("split_id"),
    )
    .join(_BINDINGS, _BINDINGS.c.agent_id == _AGENTS.c.id)
    .join(_VERSIONS, _VERSIONS.c.id == _BINDINGS.c.version_id)
    .outerjoin(
        _SPLITS, and_(_SPLITS.c.agent_id == _AGENTS.c.id, _SPLITS.c.stage == _BINDINGS.c.stage)
    )
    .where(
        _AGENTS.c.tenant_id == bindparam("b_tenant"),
        _AGENTS.c.name == bindparam("b_agent"),
        _BINDINGS.c.stage == bindparam("b_stage"),
    )
)


def _start_on_writer(
    connection: Connection,
    request: _StartRequest,
    *,
    limits: dict[str, Decimal] | None,
    invoke: _Invoke | None,
) -> RunRow:
    """:func:`start_run`'s transaction, in Core statements on the store's writer.

    The checks run in :func:`create_run`'s order, quotas first.
    """
    tenant_id, agent_name, stage = request.tenant_id, request.agent_name, request.stage
    if limits is not None:
        check_run_start(connection, tenant_id, limits)
    task = request.task
    if not task.strip() or len(task) > 100_000:
        raise InvalidRequest("The task must be 1 to 100,000 characters of text.")
    if isinstance(request.workspace, BaseException):
        raise request.workspace
    resolved = request.workspace
    found: Any  # a row of _EXPLICIT_VERSION, or of _STAGE_VERSION (with its split_id)
    if request.version is not None:
        if stage not in _EXPLICIT_VERSION_STAGES:
            raise InvalidRequest(
                f"An explicit version runs only in stage 'dev'; stage {stage!r} runs the version "
                f"promoted to it (`corral promote {agent_name}@{request.version} --to {stage}`)."
            )
        rows = execute_direct(
            connection,
            _EXPLICIT_VERSION,
            {"b_tenant": tenant_id, "b_agent": agent_name, "b_version": request.version},
            processed=True,
        )
    else:
        rows = execute_direct(
            connection,
            _STAGE_VERSION,
            {"b_tenant": tenant_id, "b_agent": agent_name, "b_stage": stage},
            processed=True,
        )
    if not rows:
        raise _VersionMissing
    found = rows[0]
    run_id = new_id("run")
    assignment = None
    if request.version is None and found.split_id is not None:
        found, assignment = assigned_version(
            connection,
            found,
            tenant_id=tenant_id,
            stage=stage,
            run_id=run_id,
            requested_by=request.requested_by,
            session_id=request.session_id,
        )
    spec = agent_spec(connection, found.version_id)
    if spec.status == "retired" or found.status == "retired":
        raise PolicyDenied(
            f"Agent {agent_name!r} is retired and cannot run; apply a version with "
            "status 'active' to bring it back.",
            code="agent_retired",
        )
    if spec.status == "draft" and stage not in _EXPLICIT_VERSION_STAGES:
        raise PolicyDenied(
            f"Agent {agent_name!r}@{found.version} is a draft: it runs only in stage "
            "'dev'; apply it with status 'active' before promoting it.",
            code="agent_draft",
        )
    decision_id = None
    if invoke is not None:
        decision_id = _decide_invoke(
            connection, invoke, agent_name, spec, stage, tenant_id, resolved
        )
    kill = active_kill_switch(connection, tenant_id, agent_name)
    if kill is not None:
        raise KillSwitchEngaged(
            f"Agent {agent_name!r} cannot start runs: {kill.describe()}. Release it with "
            f"`corral kill-switch release {_switch_flag(kill.scope, kill.target)}`.",
            scope=kill.scope,
            target=kill.target,
            engaged_by=kill.engaged_by,
        )
    chosen = request.model or spec.model.default
    if chosen not in (spec.model.default, *spec.model.allowed):
        raise InvalidRequest(
            f"Model {chosen!r} is not allowed to agent {agent_name!r}; allowed: "
            f"{', '.join([spec.model.default, *spec.model.allowed])}."
        )
    now = utcnow()
    values: dict[str, Any] = dict.fromkeys(_RUN_COLUMNS)
    values.update(
        id=run_id,
        tenant_id=tenant_id,
        agent_id=found.id,
        agent_name=agent_name,
        agent_version_id=found.version_id,
        agent_version=found.version,
        stage=stage,
        status=RunStatus.QUEUED,
        task=task,
        workspace=resolved,
        requested_by=request.requested_by,
        session_id=request.session_id,
        model=chosen,
        trace_id=new_trace_id(),
        step_count=0,
        iterations=0,
        tool_call_count=0,
        input_tokens=0,
        output_tokens=0,
        cost_usd=Decimal(0),
        cancel_requested=False,
        lease_epoch=0,
        created_at=now,
        updated_at=now,
    )
    insert_rows(connection, _RUNS, [values])
    variant = record_variant(connection, assignment, values, now)
    insert_rows(
        connection,
        _RUN_EVENTS,
        [
            {
                "tenant_id": tenant_id,
                "run_id": values["id"],
                "type": "run.created",
                "data": {"agent": agent_name, "version": found.version, "model": chosen, **variant},
                "created_at": now,
            }
        ],
    )
    append_events(
        connection,
        tenant_id,
        [
            AuditRecord(
                request.requested_by,
                "run.created",
                f"run:{values['id']}",
                "success",
                run_id=values["id"],
                trace_id=values["trace_id"],
                policy_decision_id=decision_id,
                details={
                    "agent": agent_name,
                    "version": found.version,
                    "digest": found.digest,
                    "stage": stage,
                    "model": chosen,
                    "workspace": resolved,
                    "deprecated": spec.status == "deprecated",
                    **variant,
                },
            )
        ],
    )
    return _detached_run(values)


_RUN_MANAGER: Final = cast(Any, RunRow).__mapper__.class_manager


def _detached_run(values: dict[str, Any]) -> RunRow:
    """A :class:`RunRow` holding ``values`` (every column), as ``RunRow(**values)`` would.

    The row is committed already and goes back to the caller only to be read: its attributes
    are set in its ``__dict__`` directly, as SQLAlchemy fills a loaded row, without the
    attribute events of the mapped ``__init__`` (about 150 us of Python for 30 columns).
    """
    run = cast(RunRow, _RUN_MANAGER.new_instance())
    instance_dict(run).update(values)
    return run


def _decide_invoke(
    connection: Connection,
    invoke: _Invoke,
    agent_name: str,
    spec: Any,
    stage: str,
    tenant_id: str,
    workspace: str | None,
) -> str:
    """Decide ``agent.invoke`` with the engine at hand; store the decision; raise unless allowed."""
    request = _invoke_request(invoke.requester, agent_name, stage, tenant_id, workspace)
    entities = [invoke.requester, agent_entity(agent_name, tenant_id, spec)]
    decision = invoke.governance.evaluate(invoke.engine, request, entities)
    row = decision_row(decision, request, tenant_id=tenant_id, run_id=None)
    if decision.decision != "allow":
        raise _refusal(decision, request, row, agent_name, stage, workspace)
    insert_decisions(connection, [row])
    return decision.id


async def create_run(
    session: AsyncSession,
    *,
    tenant_id: str,
    agent_name: str,
    task: str,
    requested_by: str,
    workspace: str | None = None,
    workspaces: Workspaces | None = None,
    stage: str = "dev",
    version: str | None = None,
    model: str | None = None,
    governance: Governance | None = None,
    requester_roles: Iterable[str] | None = None,
    requester_groups: Iterable[str] = (),
    replay_of: str | None = None,
    replay_outputs: bool = True,
    session_id: str | None = None,
) -> RunRow:
    """Create a ``QUEUED`` run and its ``run.created`` audit event in the caller's transaction.

    Args:
        session: A session inside the caller's transaction.
        tenant_id: Tenant of the caller.
        agent_name: Registered agent to run.
        task: The task, in words, given to the agent (1..100,000 characters).
        requested_by: Principal asking for the run.
        workspace: Absolute directory the ``fs.*`` tools may read, or ``None``. It is stored
            canonical (symlinks resolved), put in the ``agent.invoke`` policy context
            (``context.workspace``) and in the ``run.created`` audit event.
        workspaces: Decides which workspaces the tenant may use; required with ``workspace``.
        stage: Release stage whose bound version runs (``dev`` follows the latest version;
            other stages change by ``corral promote``).
        version: An explicit agent version, only in stage ``dev``; ``None``: the stage's.
        model: ``provider/model`` to use instead of the agent's default; must be allowed.
        governance: Decides ``agent.invoke`` for ``requested_by`` (the decision is stored and
            referenced from the ``run.created`` audit event). ``None``: no policy check.
        requester_roles: The requester's roles in the tenant (Cedar ``principal.roles``).
        requester_groups: A user requester's groups (Cedar ``principal.groups``).
        replay_of: A recorded run of the tenant this run replays (stored as
            ``runs.replay_of``: its tool calls get the recorded results). Only the replay
            service passes it, after checking the run is the tenant's.
        replay_outputs: With ``replay_of``: also replay its recorded model outputs (an
            ``exact`` replay): the model is ``replay/<replay_of>`` (the replay provider;
            ``model`` is ignored). ``False``: a ``what_if`` replay, the agent's own model.
        session_id: The caller's session, as :func:`start_run` takes it.

    Raises:
        NotFound: unknown agent or version (the message lists the known ones).
        PolicyDenied: the agent is retired (its latest version is; whichever version would
            run) or the version is a draft outside ``dev``.
        PolicyRefused: policy does not allow ``agent.invoke`` (the message gives the policy
            ids and reasons). The decision is not stored here: the transaction rolls back
            with the refusal; :func:`start_run` stores it after the rollback.
        KillSwitchEngaged: a kill switch covers the agent, its tenant or the platform.
        PolicyDenied: ``workspace_protected`` or ``workspace_not_allowed``: see
            :meth:`Workspaces.resolve`.
        InvalidRequest: empty task, a workspace that is not a directory, a model the agent
            does not allow, or a ``session_id`` that is not 1 to 128 of ``A-Za-z0-9._:-``.
        ValueError: ``workspace`` without ``workspaces``.
    """
    _check_session_id(session_id)
    if not task.strip() or len(task) > 100_000:
        raise InvalidRequest("The task must be 1 to 100,000 characters of text.")
    resolved = None
    if workspace is not None:
        if workspaces is None:
            raise ValueError("create_run(workspace=...) needs workspaces= to check it")
        resolved = str(workspaces.resolve(tenant_id, workspace))
    agent_row, version_row = await _version_for_stage(
        session, agent_name, stage, version, tenant_id=tenant_id
    )
    run_id, assignment = new_id("run"), None
    if version is None:
        assignment = await session.run_sync(
            lambda sync: assign_version(
                sync.connection(),
                tenant_id=tenant_id,
                agent_id=agent_row.id,
                stage=stage,
                run_id=run_id,
                requested_by=requested_by,
                session_id=session_id,
            )
        )
        if assignment is not None:
            assigned = await session.get(AgentVersionRow, assignment.version_id)
            assert assigned is not None
            version_row = assigned
    spec = Agent.model_validate(version_row.document).spec
    # The agent's status is its latest version's: once retired, no version of it runs, not
    # an older one asked for by number nor one a stage is still bound to.
    if spec.status == "retired" or agent_row.status == "retired":
        raise PolicyDenied(
            f"Agent {agent_name!r} is retired and cannot run; apply a version with "
            "status 'active' to bring it back.",
            code="agent_retired",
        )
    if spec.status == "draft" and stage not in _EXPLICIT_VERSION_STAGES:
        raise PolicyDenied(
            f"Agent {agent_name!r}@{version_row.version} is a draft: it runs only in stage "
            "'dev'; apply it with status 'active' before promoting it.",
            code="agent_draft",
        )
    decision_id = None
    if governance is not None:
        requester = governance.principal_entity(
            requested_by, tenant_id, roles=requester_roles, groups=requester_groups
        )
        decision_id = await _authorize_invoke(
            session, governance, agent_name, spec, stage, requester, tenant_id, resolved
        )
    kill = await session.run_sync(
        lambda sync: active_kill_switch(sync.connection(), tenant_id, agent_name)
    )
    if kill is not None:
        raise KillSwitchEngaged(
            f"Agent {agent_name!r} cannot start runs: {kill.describe()}. Release it with "
            f"`corral kill-switch release {_switch_flag(kill.scope, kill.target)}`.",
            scope=kill.scope,
            target=kill.target,
            engaged_by=kill.engaged_by,
        )
    exact = replay_of is not None and replay_outputs
    chosen = f"replay/{replay_of}" if exact else model or spec.model.default
    if not exact and chosen not in (spec.model.default, *spec.model.allowed):
        raise InvalidRequest(
            f"Model {chosen!r} is not allowed to agent {agent_name!r}; allowed: "
            f"{', '.join([spec.model.default, *spec.model.allowed])}."
        )
    now = utcnow()
    run = RunRow(
        id=run_id,
        tenant_id=tenant_id,
        agent_id=agent_row.id,
        agent_name=agent_name,
        agent_version_id=version_row.id,
        agent_version=version_row.version,
        stage=stage,
        status=RunStatus.QUEUED,
        task=task,
        workspace=resolved,
        requested_by=requested_by,
        model=chosen,
        replay_of=replay_of,
        session_id=session_id,
        trace_id=new_trace_id(),
        step_count=0,
        iterations=0,
        tool_call_count=0,
        input_tokens=0,
        output_tokens=0,
        cost_usd=Decimal(0),
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )
    session.add(run)
    session.add(
        RunEventRow(
            tenant_id=tenant_id,
            run_id=run.id,
            type="run.created",
            data={"agent": agent_name, "version": version_row.version, "model": chosen},
            created_at=now,
        )
    )
    await session.flush()
    run_values = {column: getattr(run, column) for column in _RUN_COLUMNS}
    variant = await session.run_sync(
        lambda sync: record_variant(sync.connection(), assignment, run_values, now)
    )
    await append_event(
        session,
        tenant_id=tenant_id,
        actor=requested_by,
        action="run.created",
        subject=f"run:{run.id}",
        outcome="success",
        run_id=run.id,
        trace_id=run.trace_id,
        policy_decision_id=decision_id,
        details={
            "agent": agent_name,
            "version": version_row.version,
            "digest": version_row.digest,
            "stage": stage,
            "model": chosen,
            "workspace": resolved,
            "deprecated": spec.status == "deprecated",
            **variant,
        },
    )
    return run


async def _version_for_stage(
    session: AsyncSession, agent_name: str, stage: str, version: str | None, *, tenant_id: str
) -> tuple[AgentRow, AgentVersionRow]:
    if version is not None:
        if stage not in _EXPLICIT_VERSION_STAGES:
            raise InvalidRequest(
                f"An explicit version runs only in stage 'dev'; stage {stage!r} runs the version "
                f"promoted to it (`corral promote {agent_name}@{version} --to {stage}`)."
            )
        return await get_agent_version(session, agent_name, version, tenant_id=tenant_id)
    agent = await get_agent(session, agent_name, tenant_id=tenant_id)
    binding = (
        await session.execute(
            select(StageBindingRow).where(
                StageBindingRow.agent_id == agent.id, StageBindingRow.stage == stage
            )
        )
    ).scalar_one_or_none()
    if binding is None:
        raise NotFound(
            f"Agent {agent_name!r} has no version promoted to {stage!r}; run "
            f"`corral promote {agent_name}@{agent.latest_version} --to {stage}` "
            "(or run it in stage 'dev').",
            kind="stage_binding",
            name=f"{agent_name}:{stage}",
        )
    row = await session.get(AgentVersionRow, binding.version_id)
    assert row is not None
    return agent, row


async def _authorize_invoke(
    session: AsyncSession,
    governance: Governance,
    agent_name: str,
    spec: Any,
    stage: str,
    requester: Entity,
    tenant_id: str,
    workspace: str | None,
) -> str:
    """Decide ``agent.invoke``; store the decision; raise unless it allows."""
    request = _invoke_request(requester, agent_name, stage, tenant_id, workspace)
    entities = [
        requester,
        agent_entity(agent_name, tenant_id, spec),
    ]
    decision = await governance.decide(tenant_id, request, entities, session=session)
    row = decision_row(decision, request, tenant_id=tenant_id, run_id=None)
    if decision.decision != "allow":
        # The caller's transaction rolls back with the refusal: record it on its own.
        raise _refusal(decision, request, row, agent_name, stage, workspace)
    await session.run_sync(lambda sync: insert_decisions(sync.connection(), [row]))
    return decision.id


def _invoke_request(
    requester: Entity, agent_name: str, stage: str, tenant_id: str, workspace: str | None
) -> PolicyRequest:
    requested_by = requester.uid.id
    return PolicyRequest(
        principal=principal_ref(requested_by),
        action="agent.invoke",
        resource=EntityRef("Agent", agent_name),
        context=PolicyContext(
            tenant=tenant_id, stage=stage, requester=requested_by, workspace=workspace
        ),
    )


def _refusal(
    decision: PolicyDecision,
    request: PolicyRequest,
    row: dict[str, Any],
    agent_name: str,
    stage: str,
    workspace: str | None,
) -> _InvokeRefused:
    """The refusal of ``agent.invoke``, with its decision row and audit event to store."""
    requested_by = request.context.requester
    audit = AuditRecord(
        requested_by,
        "agent.invoke",
        f"agent:{agent_name}",
        "denied",
        policy_decision_id=decision.id,
        details={
            "stage": stage,
            "workspace": workspace,
            "decision": decision.decision,
            "policies": list(decision.determining_policies),
        },
    )
    because = "; ".join(decision.reasons) or "no policy permits it"
    return _InvokeRefused(
        f"Policy does not allow {requested_by} to invoke agent {agent_name!r} in stage "
        f"{stage!r} (decision {decision.decision}): {because} (policies: "
        f"{', '.join(decision.determining_policies) or 'default deny'}; "
        f"decision {decision.id}).",
        decision_id=decision.id,
        row=row,
        audit=audit,
    )


class _InvokeRefused(PolicyRefused):
    """A refused ``agent.invoke``, with what :func:`start_run` stores after the rollback."""

    def __init__(
        self, message: str, *, decision_id: str, row: dict[str, Any], audit: AuditRecord
    ) -> None:
        super().__init__(message, decision_id=decision_id)
        self.row = row
        self.audit = audit


def _record_refusal(
    connection: Connection, *, row: dict[str, Any], tenant_id: str, audit: AuditRecord
) -> None:
    insert_decisions(connection, [row])
    append_events(connection, tenant_id, [audit])


def _switch_flag(scope: str, target: str) -> str:
    return {"agent": f"--agent {target}", "tenant": f"--tenant {target}"}.get(scope, "--all")


async def get_run(session: AsyncSession, run_id: str, *, tenant_id: str) -> RunRow:
    """The run ``run_id``.

    Raises:
        NotFound: no such run in this tenant.
    """
    run = (
        await session.execute(
            select(RunRow).where(RunRow.id == run_id, RunRow.tenant_id == tenant_id)
        )
    ).scalar_one_or_none()
    if run is None:
        raise NotFound(
            f"Run {run_id!r} not found; list runs with `corral get runs`.", kind="run", name=run_id
        )
    return run


async def list_runs(
    session: AsyncSession,
    *,
    tenant_id: str,
    agent_name: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> list[RunRow]:
    """Runs newest first. ``before`` is the last run id of the previous page.

    Raises:
        InvalidRequest: an unknown status.
        NotFound: ``before`` names no run.
    """
    query = select(RunRow).where(RunRow.tenant_id == tenant_id)
    if agent_name:
        query = query.where(RunRow.agent_name == agent_name)
    if status:
        if status not in RUN_STATUSES:
            raise InvalidRequest(
                f"Unknown run status {status!r}; use one of {', '.join(sorted(RUN_STATUSES))}."
            )
        query = query.where(RunRow.status == status)
    if before:
        cursor = await get_run(session, before, tenant_id=tenant_id)
        query = query.where(
            (RunRow.created_at < cursor.created_at)
            | ((RunRow.created_at == cursor.created_at) & (RunRow.id < cursor.id))
        )
    query = query.order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def list_steps(
    session: AsyncSession, run_id: str, *, tenant_id: str, after: int = -1
) -> list[tuple[StepRow, list[ToolCallRow]]]:
    """The run's steps with index > ``after``, oldest first, each with its tool calls.

    Raises:
        NotFound: no such run in this tenant.
    """
    await get_run(session, run_id, tenant_id=tenant_id)
    steps = list(
        (
            await session.execute(
                select(StepRow)
                .where(StepRow.run_id == run_id, StepRow.index > after)
                .order_by(StepRow.index)
            )
        ).scalars()
    )
    calls: dict[int, list[ToolCallRow]] = {step.index: [] for step in steps}
    if steps:
        rows = await session.execute(
            select(ToolCallRow)
            .where(ToolCallRow.run_id == run_id, ToolCallRow.step_index > after)
            .order_by(ToolCallRow.step_index, ToolCallRow.call_index)
        )
        for call in rows.scalars():
            calls.setdefault(call.step_index, []).append(call)
    return [(step, calls[step.index]) for step in steps]


async def list_run_spans(
    session: AsyncSession, run_id: str, *, tenant_id: str
) -> list[dict[str, Any]]:
    """Every stored span of the run's trace, by start time.

    Raises:
        NotFound: no such run in this tenant.
    """
    run = await get_run(session, run_id, tenant_id=tenant_id)
    rows = await session.execute(
        select(SpanRow)
        .where(SpanRow.trace_id == run.trace_id, SpanRow.tenant_id == tenant_id)
        .order_by(SpanRow.start_time)
    )
    return [
        {
            "span_id": span.span_id,
            "parent_span_id": span.parent_span_id,
            "trace_id": span.trace_id,
            "name": span.name,
            "kind": span.kind,
            "status": span.status,
            "start_time": span.start_time,
            "end_time": span.end_time,
            "duration_ms": (span.end_time - span.start_time).total_seconds() * 1000,
            "attributes": span.attributes,
        }
        for span in rows.scalars()
    ]
