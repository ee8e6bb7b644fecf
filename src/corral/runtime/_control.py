"""Control of runs from outside the loop: cancel, resume, resolve in-doubt calls, kill switches.

Each operation is one transaction, audited in it. A running run is never written here except
for its ``cancel_requested`` flag: its worker reads the flag (and kill switches) before every
step and every tool call and ends the run itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, and_, or_, select

from corral.approvals import ApprovalRow
from corral.audit import AuditRecord, append_events
from corral.errors import Conflict, InvalidRequest, NotFound
from corral.registry import AgentRow
from corral.runtime._persist import KillSwitch
from corral.runtime._status import PAUSED_STATUSES, TERMINAL_STATUSES, RunStatus, ToolCallStatus
from corral.runtime._tables import KillSwitchRow, RunEventRow, RunRow, ToolCallRow
from corral.store import SYSTEM, Store, new_id, utcnow

__all__ = [
    "PAUSED_STATUSES",
    "KillSwitchInfo",
    "cancel_run",
    "engage_kill_switch",
    "list_kill_switches",
    "release_kill_switch",
    "resolve_in_doubt",
    "resume_run",
]

_RUNS = cast(Table, RunRow.__table__)
_CALLS = cast(Table, ToolCallRow.__table__)
_EVENTS = cast(Table, RunEventRow.__table__)
_KILLS = cast(Table, KillSwitchRow.__table__)
_AGENTS = cast(Table, AgentRow.__table__)
_APPROVALS = cast(Table, ApprovalRow.__table__)


def _run(connection: Connection, run_id: str, tenant_id: str) -> Any:
    """The run's row, read in ``connection``'s transaction.

    Args:
        connection: The operation's connection.
        run_id: The run.
        tenant_id: The caller's tenant; a run of another tenant is not found.

    Raises:
        NotFound: no such run in this tenant.
    """
    row = connection.execute(
        select(_RUNS).where(_RUNS.c.id == run_id, _RUNS.c.tenant_id == tenant_id)
    ).first()
    if row is None:
        raise NotFound(
            f"Run {run_id!r} not found; list runs with `corral get runs`.", kind="run", name=run_id
        )
    return row


def _event(connection: Connection, run: Any, event_type: str, now: datetime, **data: Any) -> None:
    """Append a run event (streamed over SSE) in ``connection``'s transaction.

    Args:
        connection: The operation's connection.
        run: The run's row (its ``id`` and ``tenant_id`` are used).
        event_type: ``run.finished``, ``run.resumed``, ``run.cancel_requested``...
        now: The event's time.
        **data: The event's data (JSON).
    """
    connection.execute(
        _EVENTS.insert(),
        [
            {
                "tenant_id": run.tenant_id,
                "run_id": run.id,
                "type": event_type,
                "data": data,
                "created_at": now,
            }
        ],
    )


def _finish(
    connection: Connection,
    runs: list[Any],
    status: RunStatus,
    reason: str,
    error: str,
    actor: str,
    now: datetime,
) -> int:
    """End runs that no worker holds (queued or paused) and record why; returns how many.

    The update is guarded on the status the run was read in, so a run that a worker claimed (or
    that ended) meanwhile is left alone; pending approval requests of an ended run are
    withdrawn.

    Args:
        connection: The operation's connection.
        runs: The runs' rows, as read in this transaction.
        status: The terminal status to end them in (one of :data:`TERMINAL_STATUSES`).
        reason: Their ``terminal_reason`` (``cancelled``, ``kill_switch``...).
        error: Their ``error``, for a person.
        actor: Who ends them (audit ``actor``).
        now: The time they end.

    Returns:
        How many runs it ended (those still in the status they were read in).
    """
    ended = 0
    for run in runs:
        updated = connection.execute(
            _RUNS.update()
            .where(_RUNS.c.id == run.id, _RUNS.c.status == run.status)
            .values(
                status=status,
                terminal_reason=reason,
                error=error,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
                pause_reason=None,
                resume_condition=None,
            )
        )
        if updated.rowcount == 0:
            continue
        ended += 1
        connection.execute(
            _APPROVALS.update()
            .where(_APPROVALS.c.run_id == run.id, _APPROVALS.c.status == "pending")
            .values(status="withdrawn", decided_at=now)
        )
        append_events(
            connection,
            run.tenant_id,
            [
                AuditRecord(
                    actor,
                    "run.finished",
                    f"run:{run.id}",
                    status.lower(),
                    run_id=run.id,
                    trace_id=run.trace_id,
                    details={"terminal_reason": reason, "from": run.status},
                )
            ],
        )
        _event(
            connection,
            run,
            "run.finished",
            now,
            status=status,
            terminal_reason=reason,
            output=None,
            error=error,
        )

    return ended


def _cancel(connection: Connection, run_id: str, tenant_id: str, actor: str) -> RunStatus:
    """Cancel a run in ``connection``'s transaction (see :func:`cancel_run`).

    Args:
        connection: The operation's connection.
        run_id: The run.
        tenant_id: The caller's tenant.
        actor: Who cancels it.

    Returns:
        ``CANCELLED`` (ended now) or ``RUNNING`` (cancel requested).

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run already ended.
    """
    run, now = _run(connection, run_id, tenant_id), utcnow()
    if run.status in TERMINAL_STATUSES:
        raise Conflict(f"Run {run_id!r} already ended {run.status}; there is nothing to cancel.")
    if run.status == RunStatus.RUNNING:
        connection.execute(
            _RUNS.update().where(_RUNS.c.id == run_id).values(cancel_requested=True, updated_at=now)
        )
        append_events(
            connection,
            tenant_id,
            [
                AuditRecord(
                    actor,
                    "run.cancel_requested",
                    f"run:{run_id}",
                    "success",
                    run_id=run_id,
                    trace_id=run.trace_id,
                )
            ],
        )
        _event(connection, run, "run.cancel_requested", now, by=actor)
        return RunStatus.RUNNING
    cancelled = RunStatus.CANCELLED
    if _finish(connection, [run], cancelled, "cancelled", f"cancelled by {actor}", actor, now):
        return cancelled
    # A worker claimed it meanwhile: ask that worker to stop it.
    return _cancel(connection, run_id, tenant_id, actor)


async def cancel_run(store: Store, run_id: str, *, tenant_id: str, actor: str) -> RunStatus:
    """Cancel a run.

    A queued or paused run ends ``CANCELLED`` at once. A running one gets ``cancel_requested``:
    no new step or tool call starts after this commits, and an in-flight model call is
    abandoned; its worker ends it ``CANCELLED``.

    Args:
        store: The store.
        run_id: The run.
        tenant_id: The caller's tenant.
        actor: Who cancels it (audit ``actor``).

    Returns:
        ``CANCELLED`` (ended now) or ``RUNNING`` (cancel requested).

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run already ended.
    """
    return await store.run_sync(
        functools.partial(_cancel, run_id=run_id, tenant_id=tenant_id, actor=actor), tenant_id
    )


def _resume(
    connection: Connection, run_id: str, tenant_id: str, actor: str, details: dict[str, Any]
) -> None:
    """Queue a paused run again in ``connection``'s transaction (see :func:`resume_run`).

    Args:
        connection: The operation's connection.
        run_id: The run.
        tenant_id: The caller's tenant.
        actor: Who resumes it.
        details: Added to the ``run.resumed`` audit and run events.

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run is not paused.
    """
    run, now = _run(connection, run_id, tenant_id), utcnow()
    if run.status not in PAUSED_STATUSES:
        raise Conflict(
            f"Run {run_id!r} is {run.status}, not paused; only {' or '.join(PAUSED_STATUSES)} "
            "runs can be resumed."
        )
    connection.execute(
        _RUNS.update()
        .where(_RUNS.c.id == run_id)
        .values(status=RunStatus.QUEUED, pause_reason=None, resume_condition=None, updated_at=now)
    )
    append_events(
        connection,
        tenant_id,
        [
            AuditRecord(
                actor,
                "run.resumed",
                f"run:{run_id}",
                "success",
                run_id=run_id,
                trace_id=run.trace_id,
                details={"from": run.status, **details},
            )
        ],
    )
    _event(connection, run, "run.resumed", now, by=actor, **details)


async def resume_run(
    store: Store, run_id: str, *, tenant_id: str, actor: str, details: dict[str, Any] | None = None
) -> None:
    """Put a paused run back in the queue; any worker continues it from its last checkpoint.

    This is the seam approvals use: when a request is decided, the approval service calls it.

    Args:
        store: The store.
        run_id: The run.
        tenant_id: The caller's tenant.
        actor: Who resumes it (audit ``actor``).
        details: Added to the ``run.resumed`` audit and run events (e.g. the approval's id).

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run is not paused.
    """
    await store.run_sync(
        functools.partial(
            _resume, run_id=run_id, tenant_id=tenant_id, actor=actor, details=details or {}
        ),
        tenant_id,
    )


Resolution = Literal["done", "retry", "failed"]


def _resolve(
    connection: Connection,
    run_id: str,
    tenant_id: str,
    actor: str,
    resolution: Resolution,
    comment: str,
) -> str:
    """Settle an in-doubt call and resume its run (see :func:`resolve_in_doubt`).

    Args:
        connection: The operation's connection.
        run_id: The ``IN_DOUBT`` run.
        tenant_id: The caller's tenant.
        actor: Who settles it.
        resolution: ``done``, ``retry`` or ``failed``.
        comment: Why, for the audit log (may be empty).

    Returns:
        The idempotency key of the settled call.

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run is not ``IN_DOUBT``.
    """
    run = _run(connection, run_id, tenant_id)
    condition = run.resume_condition or {}
    if run.status != RunStatus.IN_DOUBT or condition.get("kind") != "in_doubt":
        raise Conflict(f"Run {run_id!r} is {run.status}, not IN_DOUBT; nothing to resolve.")
    key, now = str(condition["idempotency_key"]), utcnow()
    note = f"resolved as {resolution} by {actor}" + (f": {comment}" if comment else "")
    outcomes: dict[str, dict[str, Any]] = {
        "done": {
            "status": ToolCallStatus.COMPLETED,
            "output": f"({note}; the effect took place)",
            "finished_at": now,
        },
        "failed": {
            "status": ToolCallStatus.FAILED,
            "error": f"({note})",
            "error_type": "resolved_failed",
            "finished_at": now,
        },
        "retry": {"status": ToolCallStatus.RETRY},
    }
    values = outcomes[resolution]
    connection.execute(_CALLS.update().where(_CALLS.c.idempotency_key == key).values(**values))
    _resume(
        connection,
        run_id,
        tenant_id,
        actor,
        {"resolution": resolution, "idempotency_key": key, "comment": comment},
    )
    return key


async def resolve_in_doubt(
    store: Store,
    run_id: str,
    *,
    tenant_id: str,
    actor: str,
    resolution: Resolution,
    comment: str = "",
) -> str:
    """Settle the in-doubt tool call of an ``IN_DOUBT`` run and resume it.

    ``done``: the effect happened; the call is recorded ``COMPLETED`` and not run again.
    ``retry``: run the call again (with the same idempotency key). ``failed``: record it
    ``FAILED``; the model sees the failure and goes on.

    Args:
        store: The store.
        run_id: The ``IN_DOUBT`` run.
        tenant_id: The caller's tenant.
        actor: Who settles it (audit ``actor``).
        resolution: ``done``, ``retry`` or ``failed``.
        comment: Why, for the audit log.

    Returns:
        The idempotency key of the resolved call.

    Raises:
        NotFound: no such run in this tenant.
        Conflict: the run is not ``IN_DOUBT``.
        InvalidRequest: an unknown resolution.
    """
    if resolution not in ("done", "retry", "failed"):
        raise InvalidRequest(f"Unknown resolution {resolution!r}; use done, retry or failed.")
    return await store.run_sync(
        functools.partial(
            _resolve,
            run_id=run_id,
            tenant_id=tenant_id,
            actor=actor,
            resolution=resolution,
            comment=comment,
        ),
        tenant_id,
    )


@dataclass(frozen=True)
class KillSwitchInfo:
    """A kill switch as listed."""

    id: str
    tenant_id: str
    scope: str
    target: str
    reason: str
    engaged_by: str
    engaged_at: datetime
    released_by: str | None
    released_at: datetime | None


Scope = Literal["agent", "tenant", "platform"]


def _covered(scope: Scope, target: str, tenant_id: str) -> Any:
    if scope == "platform":
        return _RUNS.c.id.is_not(None)
    if scope == "tenant":
        return _RUNS.c.tenant_id == target
    return and_(_RUNS.c.tenant_id == tenant_id, _RUNS.c.agent_name == target)


def _engage(
    connection: Connection, scope: Scope, target: str, tenant_id: str, reason: str, actor: str
) -> tuple[KillSwitchInfo, int]:
    """Engage a kill switch in ``connection``'s transaction (see :func:`engage_kill_switch`).

    Args:
        connection: The operation's connection.
        scope: ``agent``, ``tenant`` or ``platform``.
        target: Agent name, tenant id or ``*``.
        tenant_id: The caller's tenant (the agent's, for an agent switch).
        reason: Why.
        actor: Who engages it.

    Returns:
        The switch and how many queued or paused runs it ended.

    Raises:
        NotFound: an agent switch for an unknown agent.
        Conflict: the same switch is already engaged.
    """
    if (
        scope == "agent"
        and connection.execute(
            select(_AGENTS.c.id).where(_AGENTS.c.tenant_id == tenant_id, _AGENTS.c.name == target)
        ).first()
        is None
    ):
        raise NotFound(f"Agent {target!r} not found; nothing to stop.", kind="agent", name=target)
    owner = "*" if scope == "platform" else (target if scope == "tenant" else tenant_id)
    existing = connection.execute(
        select(_KILLS).where(
            _KILLS.c.released_at.is_(None),
            _KILLS.c.scope == scope,
            _KILLS.c.target == target,
            _KILLS.c.tenant_id == owner,
        )
    ).first()
    if existing is not None:
        raise Conflict(
            f"{KillSwitch(scope, target, existing.engaged_by, existing.reason).describe()} "
            "is already engaged."
        )
    now = utcnow()
    info = KillSwitchInfo(new_id("kill"), owner, scope, target, reason, actor, now, None, None)
    connection.execute(
        _KILLS.insert(),
        [
            {
                "id": info.id,
                "tenant_id": owner,
                "scope": scope,
                "target": target,
                "reason": reason,
                "engaged_by": actor,
                "engaged_at": now,
            }
        ],
    )
    append_events(
        connection,
        "*" if scope == "platform" else owner,
        [
            AuditRecord(
                actor,
                "kill_switch.engaged",
                f"kill_switch:{scope}:{target}",
                "success",
                details={"reason": reason, "id": info.id},
            )
        ],
    )
    idle = connection.execute(
        select(_RUNS).where(
            _covered(scope, target, tenant_id),
            or_(_RUNS.c.status == RunStatus.QUEUED, _RUNS.c.status.in_(PAUSED_STATUSES)),
        )
    ).all()
    killed = _finish(
        connection,
        list(idle),
        RunStatus.KILLED,
        "kill_switch",
        KillSwitch(scope, target, actor, reason).describe(),
        actor,
        now,
    )
    return info, killed


async def engage_kill_switch(
    store: Store, *, scope: Scope, target: str, tenant_id: str, reason: str, actor: str
) -> tuple[KillSwitchInfo, int]:
    """Engage a kill switch.

    No new run of what it covers starts; queued and paused runs end ``KILLED`` now, running
    ones at their next check (before a step or a tool call).

    Args:
        store: The store.
        scope: ``agent`` (one agent of ``tenant_id``), ``tenant`` (``target`` is a tenant id)
            or ``platform`` (every run; ``target`` is ``*``).
        target: Agent name, tenant id or ``*``.
        tenant_id: The caller's tenant (the agent's tenant for an agent switch).
        reason: Why, for the audit log and for the callers that are refused.
        actor: Who engages it.

    Returns:
        The switch and how many queued or paused runs it ended at once.

    Raises:
        NotFound: an agent switch for an unknown agent.
        Conflict: the same switch is already engaged.
    """
    if not reason.strip():
        raise InvalidRequest("A kill switch needs a reason (--reason TEXT).")
    return await store.run_sync(
        functools.partial(
            _engage, scope=scope, target=target, tenant_id=tenant_id, reason=reason, actor=actor
        ),
        SYSTEM if scope == "platform" else tenant_id,
    )


def _release(
    connection: Connection, scope: Scope, target: str, tenant_id: str, actor: str
) -> KillSwitchInfo:
    """Release an engaged kill switch in ``connection``'s transaction.

    Args:
        connection: The operation's connection.
        scope: ``agent``, ``tenant`` or ``platform``.
        target: Agent name, tenant id or ``*``.
        tenant_id: The caller's tenant.
        actor: Who releases it.

    Returns:
        The released switch.

    Raises:
        NotFound: no such engaged switch.
    """
    owner = "*" if scope == "platform" else (target if scope == "tenant" else tenant_id)
    row = connection.execute(
        select(_KILLS).where(
            _KILLS.c.released_at.is_(None),
            _KILLS.c.scope == scope,
            _KILLS.c.target == target,
            _KILLS.c.tenant_id == owner,
        )
    ).first()
    if row is None:
        raise NotFound(
            f"No engaged kill switch '{scope}:{target}'; see `corral kill-switch list`.",
            kind="kill_switch",
            name=f"{scope}:{target}",
        )
    now = utcnow()
    connection.execute(
        _KILLS.update().where(_KILLS.c.id == row.id).values(released_at=now, released_by=actor)
    )
    append_events(
        connection,
        owner,
        [
            AuditRecord(
                actor,
                "kill_switch.released",
                f"kill_switch:{scope}:{target}",
                "success",
                details={"id": row.id, "engaged_by": row.engaged_by},
            )
        ],
    )
    return KillSwitchInfo(
        row.id, owner, scope, target, row.reason, row.engaged_by, row.engaged_at, actor, now
    )


async def release_kill_switch(
    store: Store, *, scope: Scope, target: str, tenant_id: str, actor: str
) -> KillSwitchInfo:
    """Release an engaged kill switch; new runs may start again.

    Args:
        store: The store.
        scope: ``agent``, ``tenant`` or ``platform``.
        target: Agent name, tenant id or ``*``.
        tenant_id: The caller's tenant.
        actor: Who releases it (audit ``actor``).

    Returns:
        The released switch.

    Raises:
        NotFound: no such engaged switch.
    """
    return await store.run_sync(
        functools.partial(_release, scope=scope, target=target, tenant_id=tenant_id, actor=actor),
        SYSTEM if scope == "platform" else tenant_id,
    )


def _list(connection: Connection, tenant_id: str, include_released: bool) -> list[KillSwitchInfo]:
    """Kill switches of ``tenant_id`` and of the platform, newest first.

    Args:
        connection: The operation's connection.
        tenant_id: The caller's tenant.
        include_released: Released switches too.
    """
    query = select(_KILLS).where(_KILLS.c.tenant_id.in_((tenant_id, "*")))
    if not include_released:
        query = query.where(_KILLS.c.released_at.is_(None))
    rows = connection.execute(query.order_by(_KILLS.c.engaged_at.desc())).all()
    return [
        KillSwitchInfo(
            r.id,
            r.tenant_id,
            r.scope,
            r.target,
            r.reason,
            r.engaged_by,
            r.engaged_at,
            r.released_by,
            r.released_at,
        )
        for r in rows
    ]


async def list_kill_switches(
    store: Store, *, tenant_id: str, include_released: bool = False
) -> list[KillSwitchInfo]:
    """Kill switches of the tenant (and the platform's), newest first.

    Args:
        store: The store.
        tenant_id: The caller's tenant.
        include_released: Released switches too (``False``: engaged ones only).
    """
    # A read: a snapshot of its own (no write lock, no writer-thread round trip on SQLite).
    return await store.read_sync(
        functools.partial(_list, tenant_id=tenant_id, include_released=include_released), tenant_id
    )
