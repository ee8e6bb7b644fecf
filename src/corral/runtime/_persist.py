"""The runtime's reads and writes, as synchronous functions over one ``Connection``.

They run through :meth:`corral.store.Store.run_sync`: one transaction each, built from Core
statements (no ORM unit of work on the hot path), the same code on SQLite and PostgreSQL.

Fencing: every write a worker makes for a run starts with one fenced statement,
``UPDATE runs SET ... WHERE id = :run AND lease_owner = :worker AND lease_epoch = :epoch AND
status = 'RUNNING'``, and writes nothing more when it matches no row. ``lease_epoch`` counts
the claims of the run, so a worker whose lease was taken over (by another worker, or by itself
after the lease expired) is refused even when its ``lease_owner`` is unchanged. On PostgreSQL
the UPDATE also locks the run row until the transaction ends, so a concurrent claim waits for
the write and then sees its effect.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Integer, Table, and_, bindparam, exists, func, or_, select

from corral.approvals import ApprovalRow
from corral.audit import AuditRecord, append_events
from corral.contracts import Agent, AgentSpec
from corral.costs import ModelCall, insert_model_calls, release_reservations
from corral.observability import SpanRow
from corral.policy import insert_decisions
from corral.registry import AgentVersionRow, McpToolPinRow, ToolRow, ToolVersionRow
from corral.runtime._tables import KillSwitchRow, RunEventRow, RunRow, StepRow, ToolCallRow
from corral.store import execute_direct, insert_rows, skip_locked

__all__ = [
    "Checkpoint",
    "Claimed",
    "KillSwitch",
    "Lease",
    "LoadedRun",
    "Signals",
    "active_kill_switch",
    "claim",
    "fail_run",
    "hand_back",
    "insert_spans",
    "load_run",
    "pause_run",
    "read_signals",
    "record_finished_call",
    "record_started_call",
    "renew_leases",
    "runs_to_abort",
    "write_checkpoint",
]

_RUNS = cast(Table, RunRow.__table__)
_STEPS = cast(Table, StepRow.__table__)
_CALLS = cast(Table, ToolCallRow.__table__)
_SPANS = cast(Table, SpanRow.__table__)
_VERSIONS = cast(Table, AgentVersionRow.__table__)
_TOOLS = cast(Table, ToolRow.__table__)
_TOOL_VERSIONS = cast(Table, ToolVersionRow.__table__)
_PINS = cast(Table, McpToolPinRow.__table__)
_EVENTS = cast(Table, RunEventRow.__table__)
_KILLS = cast(Table, KillSwitchRow.__table__)
_APPROVALS = cast(Table, ApprovalRow.__table__)

# Statements are built once (building costs ~5x executing on SQLite). An UPDATE without
# .values() takes its SET columns from the parameters of each execution.
_HELD = and_(
    _RUNS.c.id == bindparam("b_run_id"),
    _RUNS.c.lease_owner == bindparam("b_worker_id"),
    _RUNS.c.lease_epoch == bindparam("b_epoch"),
    _RUNS.c.status == "RUNNING",
)
_FENCED_RUN = _RUNS.update().where(_HELD).returning(_RUNS.c.cancel_requested)
_INSERT_STEP = _STEPS.insert()
_INSERT_CALLS = _CALLS.insert()
_INSERT_SPANS = _SPANS.insert()
_INSERT_EVENTS = _EVENTS.insert()
_KILL_APPLIES = and_(
    _KILLS.c.released_at.is_(None),
    or_(
        _KILLS.c.scope == "platform",
        and_(_KILLS.c.scope == "tenant", _KILLS.c.target == bindparam("b_tenant")),
        and_(
            _KILLS.c.scope == "agent",
            _KILLS.c.tenant_id == bindparam("b_tenant"),
            _KILLS.c.target == bindparam("b_agent"),
        ),
    ),
)
_ACTIVE_KILL = (
    select(_KILLS.c.scope, _KILLS.c.target, _KILLS.c.engaged_by, _KILLS.c.reason)
    .where(_KILL_APPLIES)
    .order_by(_KILLS.c.engaged_at)
    .limit(1)
)
# The id of the oldest kill switch that applies to the run, or NULL.
_KILL_ID = (
    select(_KILLS.c.id)
    .where(_KILL_APPLIES)
    .order_by(_KILLS.c.engaged_at)
    .limit(1)
    .scalar_subquery()
    .label("kill_id")
)
# The checkpoint's fenced update also says whether a kill switch applies (a scalar subquery in
# RETURNING): one statement instead of two; the switch's details are read only when one does.
_FENCED_RUN_SIGNALS = _RUNS.update().where(_HELD).returning(_RUNS.c.cancel_requested, _KILL_ID)
# The same two answers for a read (before a read-only tool call).
_RUN_SIGNALS = select(_RUNS.c.cancel_requested, _KILL_ID).where(_HELD)


@dataclass(frozen=True)
class Lease:
    """A worker's hold on a run: what every write the worker makes for the run is checked against.

    Attributes:
        run_id: The run.
        worker_id: The worker (``runs.lease_owner``).
        epoch: ``runs.lease_epoch`` as the worker's claim set it (the fencing token).
    """

    run_id: str
    worker_id: str
    epoch: int

    def params(self) -> dict[str, Any]:
        """Bind parameters of the fenced statements."""
        return {"b_run_id": self.run_id, "b_worker_id": self.worker_id, "b_epoch": self.epoch}


def _fence(connection: Connection, lease: Lease, **values: Any) -> tuple[Any, ...] | None:
    """Set ``values`` on the run if ``lease`` still holds it.

    Args:
        connection: The transaction's connection.
        lease: The worker's lease (run, worker, epoch) the update is conditioned on.
        **values: Columns of ``runs`` to set.

    Returns:
        The row (``(cancel_requested,)``), or ``None`` when the lease was taken over or the run
        is no longer ``RUNNING`` (nothing written).
    """
    rows = execute_direct(connection, _FENCED_RUN, {**lease.params(), **values})
    return rows[0] if rows else None


@dataclass
class Checkpoint:
    """Everything one step writes, in one transaction.

    Attributes:
        run_id: The run.
        worker_id: The lease owner writing it (the write is refused if it lost the lease).
        lease_epoch: The epoch of its lease (likewise).
        tenant_id: The run's tenant.
        run_values: Columns of the run row to set.
        step: The step row, or ``None`` (a terminal check with no model call).
        tool_calls: Tool-call rows.
        audit: Audit events, appended in order.
        spans: Span rows.
        events: Run events (``run_events`` rows without ids).
    """

    run_id: str
    worker_id: str
    lease_epoch: int
    tenant_id: str
    run_values: dict[str, Any]
    step: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    agent_name: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """Policy decision rows made during the step."""
    model_calls: list[ModelCall] = field(default_factory=list)
    """Cost-ledger rows of the step's model call."""
    reservation_ids: list[str] = field(default_factory=list)
    """Budget reservations the step settles or abandons (deleted)."""


@dataclass(frozen=True)
class KillSwitch:
    """An engaged kill switch that applies to a run."""

    scope: str
    target: str
    engaged_by: str
    reason: str

    def describe(self) -> str:
        """``kill switch 'agent:repo-analyst' engaged by user:x: reason``."""
        return (
            f"kill switch '{self.scope}:{self.target}' engaged by {self.engaged_by}: {self.reason}"
        )


@dataclass(frozen=True)
class Signals:
    """What a running run must obey at its next check: a cancel request or a kill switch."""

    cancel_requested: bool
    kill: KillSwitch | None = None


def active_kill_switch(
    connection: Connection, tenant_id: str, agent_name: str
) -> KillSwitch | None:
    """The oldest engaged kill switch covering this agent in this tenant, if any.

    Args:
        connection: The transaction's connection.
        tenant_id: The agent's tenant.
        agent_name: The agent.
    """
    rows = execute_direct(connection, _ACTIVE_KILL, {"b_tenant": tenant_id, "b_agent": agent_name})
    return KillSwitch(*rows[0]) if rows else None  # (scope, target, engaged_by, reason)


def read_signals(
    connection: Connection, *, lease: Lease, tenant_id: str, agent_name: str
) -> Signals | None:
    """The run's cancel flag and applicable kill switch; ``None`` if this worker lost the lease.

    Args:
        connection: The transaction's connection.
        lease: The worker's lease on the run.
        tenant_id: The run's tenant.
        agent_name: The run's agent (kill switches of it apply).
    """
    params = {**lease.params(), "b_tenant": tenant_id, "b_agent": agent_name}
    rows = execute_direct(connection, _RUN_SIGNALS, params)
    if not rows:
        return None
    cancel_requested, kill_id = rows[0]
    if kill_id is None:
        return Signals(bool(cancel_requested))
    return Signals(bool(cancel_requested), active_kill_switch(connection, tenant_id, agent_name))


def write_checkpoint(connection: Connection, checkpoint: Checkpoint) -> Signals | None:
    """Write a checkpoint; returns the run's signals, or ``None`` if the lease is lost.

    The run update comes first and is fenced on the lease (``lease_owner``, ``lease_epoch``)
    and ``RUNNING``: a worker whose lease was taken over writes nothing, so it can never insert
    a step that its successor already wrote.
    """
    lease = Lease(checkpoint.run_id, checkpoint.worker_id, checkpoint.lease_epoch)
    running = checkpoint.run_values.get("status", "RUNNING") == "RUNNING"
    if running:
        params = {"b_tenant": checkpoint.tenant_id, "b_agent": checkpoint.agent_name}
        rows = execute_direct(
            connection, _FENCED_RUN_SIGNALS, {**lease.params(), **params, **checkpoint.run_values}
        )
        row = rows[0] if rows else None
    else:
        row = _fence(connection, lease, **checkpoint.run_values)
    if row is None:
        return None
    if checkpoint.step is not None:
        insert_rows(connection, _STEPS, [checkpoint.step])
    insert_rows(connection, _CALLS, checkpoint.tool_calls)
    if checkpoint.audit:
        append_events(connection, checkpoint.tenant_id, checkpoint.audit)
    insert_rows(connection, _SPANS, checkpoint.spans)
    insert_rows(connection, _EVENTS, checkpoint.events)
    insert_decisions(connection, checkpoint.decisions)
    if checkpoint.model_calls or checkpoint.reservation_ids:
        insert_model_calls(
            connection, checkpoint.model_calls, reservation_ids=checkpoint.reservation_ids
        )
    cancel_requested = bool(row[0])  # a SQLite boolean is 0 or 1
    if not running or row[1] is None:  # (cancel_requested, kill_id)
        return Signals(cancel_requested)
    kill = active_kill_switch(connection, checkpoint.tenant_id, checkpoint.agent_name)
    return Signals(cancel_requested, kill)


def record_started_call(
    connection: Connection,
    *,
    lease: Lease,
    tenant_id: str,
    agent_name: str,
    pending_decision: dict[str, Any],
    call: dict[str, Any],
) -> Signals | None:
    """Record a side-effecting tool call ``STARTED`` before it executes.

    Writes the step's pending decision (fenced on the lease) and then the call's row (with its
    idempotency key), in one transaction. A cancel request or kill switch read in the same
    transaction stops the call: its row is not written.

    Args:
        connection: The transaction's connection.
        lease: The worker's lease on the run.
        tenant_id: The run's tenant.
        agent_name: The run's agent (kill switches of it apply).
        pending_decision: The step's decision, stored in ``runs.pending_decision`` so a
            recovering worker continues it instead of asking the model again.
        call: The ``tool_calls`` row, status ``STARTED``, with its idempotency key.

    Returns:
        The run's signals (the call must not start if cancelled or killed), or ``None`` if the
        lease is lost (nothing written).
    """
    row = _fence(connection, lease, pending_decision=pending_decision)
    if row is None:
        return None
    signals = Signals(bool(row[0]), active_kill_switch(connection, tenant_id, agent_name))
    if signals.cancel_requested or signals.kill is not None:
        return signals
    existing = connection.execute(
        select(_CALLS.c.id).where(_CALLS.c.idempotency_key == call["idempotency_key"])
    ).first()
    if existing is None:
        connection.execute(_INSERT_CALLS, [call])
    else:  # a retry of a call left STARTED (or resolved "retry") by a crashed worker
        connection.execute(
            _CALLS.update()
            .where(_CALLS.c.idempotency_key == call["idempotency_key"])
            .values(status="STARTED", started_at=call["started_at"], error=None)
        )
    return signals


def record_finished_call(
    connection: Connection,
    *,
    lease: Lease,
    idempotency_key: str,
    values: dict[str, Any],
    now: datetime,
) -> bool:
    """After a side-effecting tool call: its outcome, so a crash now cannot make it in doubt.

    Fenced on the lease first: a worker that was paused past its lease (``SIGSTOP``, a long
    GC, a partition) while the call executed must not overwrite the row its successor owns now
    (which found the call ``STARTED`` and paused the run ``IN_DOUBT`` or retried it).

    Args:
        connection: The transaction's connection.
        lease: The worker's lease on the run.
        idempotency_key: The call's key, ``{run_id}:{step}:{call_index}``.
        values: Columns of ``tool_calls`` to set (status, output, error...).
        now: The time of the write (``runs.updated_at``).

    Returns:
        ``True`` if written; ``False`` if the lease is lost (nothing written).
    """
    if _fence(connection, lease, updated_at=now) is None:
        return False
    connection.execute(
        _CALLS.update().where(_CALLS.c.idempotency_key == idempotency_key).values(**values)
    )
    return True


def pause_run(
    connection: Connection,
    *,
    lease: Lease,
    tenant_id: str,
    status: str,
    reason: str,
    resume_condition: dict[str, Any],
    audit: AuditRecord,
    now: datetime,
    pending_decision: dict[str, Any] | None = None,
    approval: dict[str, Any] | None = None,
    decisions: list[dict[str, Any]] | None = None,
    spans: list[dict[str, Any]] | None = None,
) -> bool:
    """Park a run this worker holds (``AWAITING_APPROVAL`` or ``IN_DOUBT``).

    The lease is given up (``lease_epoch`` stays: the next claim increments it), so the run
    holds no worker, task or connection while it waits. Returns ``False`` if the lease was lost
    (nothing written).

    Args:
        connection: The transaction's connection.
        lease: The worker's lease on the run (given up here).
        tenant_id: The run's tenant.
        status: ``AWAITING_APPROVAL`` or ``IN_DOUBT``.
        reason: Why it waits, for a person (``runs.pause_reason``).
        resume_condition: What resumes it (``{"kind": "in_doubt", "idempotency_key": ...}``).
        audit: The ``run.paused`` audit event.
        now: The time of the pause.
        pending_decision: The step's decision, kept for the run's resumption.
        approval: The approval request row to insert, if the pause waits for one.
        decisions: Policy decision rows to store with the pause.
        spans: Span rows of the run segment that ends here.
    """
    values: dict[str, Any] = {
        "status": status,
        "pause_reason": reason,
        "resume_condition": resume_condition,
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    if pending_decision is not None:
        values["pending_decision"] = pending_decision
    if _fence(connection, lease, **values) is None:
        return False
    run_id = lease.run_id
    # The step's model call is settled with the step's checkpoint after the resumption (its
    # ledger row is in the pending decision); a waiting run holds no budget meanwhile.
    release_reservations(connection, run_ids=[run_id])
    if approval is not None:
        connection.execute(_APPROVALS.insert(), [approval])
    insert_decisions(connection, decisions or [])
    if spans:
        connection.execute(_INSERT_SPANS, spans)
    append_events(connection, tenant_id, [audit])
    connection.execute(
        _INSERT_EVENTS,
        [
            {
                "tenant_id": tenant_id,
                "run_id": run_id,
                "type": "run.paused",
                "data": {"status": status, "reason": reason, "resume": resume_condition},
                "created_at": now,
            }
        ],
    )
    return True


@dataclass(frozen=True)
class LoadedRun:
    """A run as stored: its row, agent document, offered tool documents, steps and calls."""

    run: Any
    spec: AgentSpec
    """The run's agent version's spec (:func:`agent_spec`)."""
    tool_documents: list[tuple[str, str, dict[str, Any]]]
    """``(name, version, document)`` of every registered tool of the tenant (latest version),
    quarantined MCP tools excepted."""
    steps: list[Any]
    calls: list[Any]
    signals: Signals
    approved: dict[tuple[int, str], list[str]]
    """Policy ids approved for calls of the step in progress, by (call index, arguments
    digest): an approval covers exactly the call that was approved."""


_LOAD_RUN = select(_RUNS).where(_RUNS.c.id == bindparam("b_run"))
_LOAD_DOCUMENT = select(_VERSIONS.c.document).where(_VERSIONS.c.id == bindparam("b_version"))
_LOAD_TOOLS = (
    select(_TOOLS.c.name, _TOOLS.c.latest_version, _TOOL_VERSIONS.c.document)
    .join(
        _TOOL_VERSIONS,
        and_(
            _TOOL_VERSIONS.c.tool_id == _TOOLS.c.id,
            _TOOL_VERSIONS.c.version == _TOOLS.c.latest_version,
        ),
    )
    .where(_TOOLS.c.tenant_id == bindparam("b_tenant"))
    # An MCP tool whose upstream changed since its approval is not offered (quarantine).
    .where(
        ~exists().where(
            _PINS.c.tenant_id == bindparam("b_tenant"),
            _PINS.c.tool_name == _TOOLS.c.name,
            _PINS.c.status == "QUARANTINED",
        )
    )
    .order_by(_TOOLS.c.name)
)
_LOAD_STEPS = select(_STEPS).where(_STEPS.c.run_id == bindparam("b_run")).order_by(_STEPS.c.index)
_LOAD_CALLS = (
    select(_CALLS)
    .where(_CALLS.c.run_id == bindparam("b_run"))
    .order_by(_CALLS.c.step_index, _CALLS.c.call_index)
)
_LOAD_APPROVED = select(
    _APPROVALS.c.call_index, _APPROVALS.c.arguments_digest, _APPROVALS.c.policy_ids
).where(
    _APPROVALS.c.run_id == bindparam("b_run"),
    _APPROVALS.c.step_index == bindparam("b_step"),
    _APPROVALS.c.status == "approved",
)


_SPECS: dict[str, AgentSpec] = {}
"""Parsed specs of agent versions by version row id (this process's one cache of them)."""


def agent_spec(connection: Connection, version_id: str) -> AgentSpec:
    """The spec of agent version ``version_id``, read and parsed once per process.

    A version row never changes (``agent_versions`` rows are immutable: a new document is a
    new version with a new id), so the parsed spec is kept by id (at most 1,024; then the
    cache starts over) and a known version costs no read.

    Args:
        connection: A connection in a transaction (read only on a cache miss).
        version_id: ``agent_versions.id``.

    Returns:
        The version's :class:`~corral.contracts.AgentSpec` (shared: do not mutate it).

    Raises:
        sqlalchemy.exc.NoResultFound: No such version.
    """
    spec = _SPECS.get(version_id)
    if spec is None:
        document = connection.execute(_LOAD_DOCUMENT, {"b_version": version_id}).scalar_one()
        spec = Agent.model_validate(document).spec
        if len(_SPECS) >= 1024:
            _SPECS.clear()
        _SPECS[version_id] = spec
    return spec


def load_run(connection: Connection, run_id: str, *, run: Any = None) -> LoadedRun:
    """Read everything needed to rebuild a run's state (one transaction).

    Args:
        connection: The transaction's connection.
        run_id: The run.
        run: Its ``runs`` row as already read in this transaction (every column, as the
            claim's ``RETURNING`` gives it); ``None``: read here. A row with ``lease_epoch``
            1 is a run in its first lease: no worker wrote steps, tool calls or approvals for
            it (all are written under a lease), so they are not read.
    """
    if run is None:
        run = connection.execute(_LOAD_RUN, {"b_run": run_id}).one()
    spec = agent_spec(connection, run.agent_version_id)
    tools = execute_direct(connection, _LOAD_TOOLS, {"b_tenant": run.tenant_id}, processed=True)
    if run.lease_epoch == 1 and run.step_count == 0:
        steps: list[Any] = []
        calls: list[Any] = []
        approvals: list[Any] = []
    else:
        steps = list(connection.execute(_LOAD_STEPS, {"b_run": run_id}))
        calls = list(connection.execute(_LOAD_CALLS, {"b_run": run_id}))
        approvals = list(
            connection.execute(_LOAD_APPROVED, {"b_run": run_id, "b_step": run.step_count})
        )
    signals = Signals(
        bool(run.cancel_requested), active_kill_switch(connection, run.tenant_id, run.agent_name)
    )
    return LoadedRun(
        run,
        spec,
        [tuple(t) for t in tools],
        steps,
        calls,
        signals,
        {(a.call_index, a.arguments_digest): list(a.policy_ids) for a in approvals},
    )


def insert_spans(connection: Connection, *, lease: Lease, spans: list[dict[str, Any]]) -> bool:
    """Store span rows outside a checkpoint (the segment of a run that ended in a pause).

    The run was paused (its lease given up) just before: the spans are written only if no
    worker claimed it since, i.e. its ``lease_epoch`` is still the one of ``lease``.

    Args:
        connection: The transaction's connection.
        lease: The lease the worker gave up with the pause.
        spans: Span rows (``spans`` table).

    Returns:
        ``True`` if written; ``False`` if the run was claimed again since (nothing written).
    """
    row = connection.execute(
        _RUNS.update()
        .where(_RUNS.c.id == lease.run_id, _RUNS.c.lease_epoch == lease.epoch)
        .values(updated_at=_RUNS.c.updated_at)  # takes the row lock a concurrent claim waits on
        .returning(_RUNS.c.id)
    ).one_or_none()
    if row is None:
        return False
    connection.execute(_INSERT_SPANS, spans)
    return True


_RUNNABLE = or_(
    _RUNS.c.status == "QUEUED",
    and_(_RUNS.c.status == "RUNNING", _RUNS.c.lease_expires_at < bindparam("b_now")),
)
_EXPIRED = and_(_RUNS.c.status == "RUNNING", _RUNS.c.lease_expires_at < bindparam("b_now"))
# One read, two index probes (ix_runs_claim): is anything queued, has any lease expired?
_ANY_RUNNABLE: Any = select(exists().where(_RUNS.c.status == "QUEUED"), exists().where(_EXPIRED))
_EXPIRED_IDS = select(_RUNS.c.id).where(_EXPIRED)


def _claim_statement(dialect: str) -> Any:
    candidates = skip_locked(
        select(_RUNS.c.id)
        .where(_RUNNABLE)
        .order_by(_RUNS.c.created_at)
        .limit(bindparam("b_limit", type_=Integer)),
        dialect,
    )
    return (
        _RUNS.update()
        .where(_RUNS.c.id.in_(candidates.scalar_subquery()))
        .values(
            # A parameter with a fixed value (same SQL): execute_direct(processed=True) runs it.
            status=bindparam("b_running", "RUNNING", type_=_RUNS.c.status.type),
            lease_owner=bindparam("b_owner"),
            lease_expires_at=bindparam("b_expires", type_=_RUNS.c.lease_expires_at.type),
            lease_epoch=_RUNS.c.lease_epoch + 1,
            started_at=func.coalesce(_RUNS.c.started_at, bindparam("b_now")),
            updated_at=bindparam("b_now"),
        )
        # Every column: the row as updated is what load_run would read next.
        .returning(*_RUNS.c)
    )


_CLAIMS = (_claim_statement("sqlite"), _claim_statement("postgresql"))
"""The claim ``UPDATE``, built once: without and with ``FOR UPDATE SKIP LOCKED``."""


@dataclass(frozen=True)
class Claimed:
    """A run just leased."""

    run_id: str
    tenant_id: str
    trace_id: str
    step_count: int
    lease_epoch: int
    """The run's ``lease_epoch`` after this claim: the fencing token of the new lease."""
    loaded: LoadedRun | None = field(default=None, compare=False, repr=False)
    """The run as :func:`load_run` reads it, in the claim's transaction (``claim(load=True)``)."""
    reclaimed: bool = field(default=False, compare=False)
    """Whether the run was ``RUNNING`` under an expired lease (taken over, not dequeued)."""


def claim(
    connection: Connection,
    *,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    dialect: str,
    limit: int = 1,
    load: bool = False,
) -> list[Claimed]:
    """Lease up to ``limit`` runnable runs (``QUEUED``, or ``RUNNING`` with an expired lease).

    One ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``, oldest runs first; on
    PostgreSQL the subquery locks with ``FOR UPDATE SKIP LOCKED`` so concurrent workers take
    different runs. Each claim increments the run's ``lease_epoch`` (fencing out any worker
    that held it before) and appends a ``run.leased`` audit event.

    Args:
        connection: The transaction's connection.
        worker_id: The claiming worker (``lease_owner``).
        now: The time of the claim; leases expired before it are taken over.
        lease: How long the lease lasts unless renewed.
        dialect: ``sqlite`` or ``postgresql`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).
        limit: At most this many runs.
        load: Also read each claimed run (:func:`load_run`) in this transaction, so that
            executing it needs no transaction of its own to start.

    Returns:
        The runs claimed, oldest first (empty when none is runnable).
    """
    # A plain read first: an idle worker's poll costs one read and no UPDATE.
    ((queued, expired),) = execute_direct(connection, _ANY_RUNNABLE, {"b_now": now})
    if not (queued or expired):
        return []
    # Rare (a worker died or stalled): which runs a claim now takes over from an expired lease.
    reclaimable = (
        set(connection.execute(_EXPIRED_IDS, {"b_now": now}).scalars()) if expired else set()
    )
    rows = execute_direct(
        connection,
        _CLAIMS[dialect == "postgresql"],
        {"b_now": now, "b_limit": limit, "b_owner": worker_id, "b_expires": now + lease},
        processed=True,
    )
    claimed = [
        Claimed(
            r.id,
            r.tenant_id,
            r.trace_id,
            r.step_count,
            r.lease_epoch,
            load_run(connection, r.id, run=r) if load else None,
            reclaimed=r.id in reclaimable,
        )
        for r in rows
    ]
    # A reclaimed run's budget reservation was its dead (or fenced-out) worker's: release it.
    # Only an executor holding a lease reserves, so a run claimed for the first time
    # (lease_epoch 1 now) has none: a burst of new runs costs no DELETE.
    release_reservations(connection, run_ids=[c.run_id for c in claimed if c.lease_epoch > 1])
    for tenant_id in {c.tenant_id for c in claimed}:
        append_events(
            connection,
            tenant_id,
            [
                AuditRecord(
                    f"worker:{worker_id}",
                    "run.leased",
                    f"run:{c.run_id}",
                    "success",
                    run_id=c.run_id,
                    trace_id=c.trace_id,
                    details={"from_step": c.step_count, "lease_epoch": c.lease_epoch},
                )
                for c in claimed
                if c.tenant_id == tenant_id
            ],
        )
    return claimed


def runs_to_abort(connection: Connection, runs: list[tuple[str, str, str]]) -> list[str]:
    """Which of ``(run_id, tenant_id, agent_name)`` have a cancel request or a kill switch."""
    if not runs:
        return []
    cancelled = set(
        connection.execute(
            select(_RUNS.c.id).where(
                _RUNS.c.id.in_([run_id for run_id, _, _ in runs]), _RUNS.c.cancel_requested
            )
        ).scalars()
    )
    switches = connection.execute(
        select(_KILLS.c.scope, _KILLS.c.target, _KILLS.c.tenant_id).where(
            _KILLS.c.released_at.is_(None)
        )
    ).all()

    def killed(tenant_id: str, agent: str) -> bool:
        return any(
            s.scope == "platform"
            or (s.scope == "tenant" and s.target == tenant_id)
            or (s.scope == "agent" and s.tenant_id == tenant_id and s.target == agent)
            for s in switches
        )

    return [
        run_id for run_id, tenant, agent in runs if run_id in cancelled or killed(tenant, agent)
    ]


def renew_leases(
    connection: Connection, *, worker_id: str, run_ids: Collection[str], expires_at: datetime
) -> None:
    """Extend the leases ``worker_id`` holds on the running runs ``run_ids``.

    Only the runs the worker is driving now: a run it still owns in the table but stopped
    driving (its failure could not be recorded, it was handed back) must see its lease expire
    so that a worker reclaims it.

    Args:
        connection: The transaction's connection.
        worker_id: The worker holding the leases.
        run_ids: The runs it drives now.
        expires_at: The leases' new expiry (UTC).
    """
    if not run_ids:
        return
    connection.execute(
        _RUNS.update()
        .where(
            _RUNS.c.id.in_(list(run_ids)),
            _RUNS.c.lease_owner == worker_id,
            _RUNS.c.status == "RUNNING",
        )
        .values(lease_expires_at=expires_at)
    )


def hand_back(
    connection: Connection,
    *,
    run_id: str,
    worker_id: str,
    retry_at: datetime,
    lease_epoch: int | None = None,
) -> bool:
    """Give a run back after a transient error: any worker may claim it again from ``retry_at``.

    The run stays ``RUNNING`` at its last checkpoint; only its lease is shortened, so the next
    claim resumes it as it resumes a crashed worker's run. With ``lease_epoch``, only if the
    worker still holds the lease of that claim (a stale task must not shorten a newer lease).

    Args:
        connection: The transaction's connection.
        run_id: The run.
        worker_id: The worker giving it back.
        retry_at: When its lease expires now (UTC): from then on any worker may claim it.
        lease_epoch: The epoch of the claim the worker drove it under; ``None``: any.

    Returns:
        Whether this worker still held it.
    """
    held = [_RUNS.c.id == run_id, _RUNS.c.lease_owner == worker_id, _RUNS.c.status == "RUNNING"]
    if lease_epoch is not None:
        held.append(_RUNS.c.lease_epoch == lease_epoch)
    released = connection.execute(_RUNS.update().where(*held).values(lease_expires_at=retry_at))
    return bool(released.rowcount)


def fail_run(
    connection: Connection,
    *,
    run_id: str,
    worker_id: str,
    error: str,
    now: datetime,
    lease_epoch: int | None = None,
) -> bool:
    """End a run ``FAILED`` / ``internal_error`` if this worker still holds it (invariant 12).

    With ``lease_epoch``, only if it still holds the lease of that claim: a stale task of a
    worker that claimed the run again since must not end the run its newer task drives.

    Args:
        connection: The transaction's connection.
        run_id: The run.
        worker_id: The worker ending it.
        error: The run's ``error``, for a person.
        now: The time it ends.
        lease_epoch: The epoch of the claim the worker drove it under; ``None``: any.

    Returns:
        Whether the run was ended (``False``: the worker no longer held it).
    """
    held = [_RUNS.c.id == run_id, _RUNS.c.lease_owner == worker_id]
    if lease_epoch is not None:
        held.append(_RUNS.c.lease_epoch == lease_epoch)
    row = connection.execute(
        _RUNS.update()
        .where(*held)
        .values(
            status="FAILED",
            terminal_reason="internal_error",
            error=error,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(_RUNS.c.tenant_id, _RUNS.c.trace_id)
    ).one_or_none()
    if row is not None:
        append_events(
            connection,
            row.tenant_id,
            [
                AuditRecord(
                    f"worker:{worker_id}",
                    "run.finished",
                    f"run:{run_id}",
                    "failed",
                    run_id=run_id,
                    trace_id=row.trace_id,
                    details={"terminal_reason": "internal_error"},
                )
            ],
        )
    return row is not None
