"""Starting a replay: a new run of a recorded run's task, answered from its recording."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from corral.audit import append_event
from corral.errors import InvalidRequest
from corral.policy import Governance
from corral.replay._tables import ReplayRow
from corral.runtime import TERMINAL_STATUSES, Workspaces, create_run, get_run
from corral.store import Store, utcnow
from corral.tenancy import Quotas

__all__ = ["ReplayMode", "ReplayStarted", "start_replay"]

ReplayMode = Literal["exact", "what_if"]
"""``exact``: the recorded model outputs and tool results; ``what_if``: another agent
version's own model, with the recorded tool results where its calls match."""


@dataclass(frozen=True)
class ReplayStarted:
    """A replay just created (its run is ``QUEUED``; wake the workers).

    Attributes:
        run_id: The new run.
        source_run_id: The recorded run it replays.
        mode: ``exact`` or ``what_if``.
    """

    run_id: str
    source_run_id: str
    mode: ReplayMode


async def start_replay(
    store: Store,
    run_id: str,
    *,
    tenant_id: str,
    requested_by: str,
    requester_roles: Iterable[str],
    agent: str | None = None,
    version: str | None = None,
    workspaces: Workspaces | None = None,
    governance: Governance | None = None,
    quotas: Quotas | None = None,
) -> ReplayStarted:
    """Create a ``QUEUED`` run replaying the tenant's finished run ``run_id``.

    Without ``agent`` and ``version`` the replay is ``exact``: the same agent version runs the
    same task with the recorded model outputs (model ``replay/<run_id>``) and the recorded
    tool results, so it makes the same calls and gives the same answer, and no tool with a
    side effect runs again. With either, it is ``what_if``: that version's own model decides,
    calls matching a recorded one (same tool and canonical arguments) get the recorded
    result, and a side-effecting call with no recorded result is denied. Either way the run
    is governed as any run (``agent.invoke``, kill switches, quotas) and runs in stage
    ``dev`` with an explicit version; the ``run_replays`` row and a ``run.replay`` audit
    event are written in the same transaction as the run.

    Args:
        store: The store.
        run_id: The recorded run (terminal) of the tenant.
        tenant_id: The caller's tenant.
        requested_by: The caller (the new run's requester).
        requester_roles: The caller's roles (Cedar ``principal.roles``).
        agent: The agent to run instead of the recorded run's (``what_if``).
        version: The agent version to run (``what_if``); ``None``: that agent's latest.
        workspaces: Checks the recorded run's workspace is still the tenant's.
        governance: Decides ``agent.invoke``; ``None``: no policy check.
        quotas: The tenant's run quotas; ``None``: none.

    Returns:
        The new run's id, with the recorded run's and the mode.

    Raises:
        NotFound: no such run in the tenant, or no such agent or version.
        InvalidRequest: the run has not finished (its recording is incomplete).
        PolicyRefused, KillSwitchEngaged, QuotaExceeded: as for any run.
    """
    async with store.transaction(tenant_id) as session:
        source = await get_run(session, run_id, tenant_id=tenant_id)
        if source.status not in TERMINAL_STATUSES:
            raise InvalidRequest(
                f"Run {run_id!r} is {source.status}; only a finished run can be replayed. "
                f"Wait for it (`corral describe run {run_id}`) or cancel it (`corral cancel`)."
            )
        mode: ReplayMode = "exact" if agent is None and version is None else "what_if"
        if quotas is not None:
            await quotas.check_run_start(session, tenant_id)
        run = await create_run(
            session,
            tenant_id=tenant_id,
            agent_name=agent or source.agent_name,
            task=source.task,
            requested_by=requested_by,
            workspace=source.workspace,
            workspaces=workspaces,
            stage="dev",
            version=version if mode == "what_if" else source.agent_version,
            governance=governance,
            requester_roles=requester_roles,
            replay_of=run_id,
            replay_outputs=mode == "exact",
        )
        session.add(
            ReplayRow(
                run_id=run.id,
                tenant_id=tenant_id,
                source_run_id=run_id,
                mode=mode,
                requested_by=requested_by,
                created_at=utcnow(),
            )
        )
        await append_event(
            session,
            tenant_id=tenant_id,
            actor=requested_by,
            action="run.replay",
            subject=f"run:{run.id}",
            outcome="success",
            run_id=run.id,
            trace_id=run.trace_id,
            details={"source_run_id": run_id, "mode": mode, "model": run.model},
        )
    return ReplayStarted(run.id, run_id, mode)
