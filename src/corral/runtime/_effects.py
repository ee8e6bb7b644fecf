"""What other domains' decisions do to runs: approvals decided, tenants suspended.

Approvals and tenancy sit below the runtime (the runtime raises approval requests and checks
quotas), so they do not import it: the composition root hands them these objects instead
(:class:`~corral.approvals.ApprovalEffects`, :class:`~corral.tenancy.TenantKillSwitch`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, select

from corral.errors import Conflict
from corral.observability import RUN_ID_ATTRIBUTE, SpanRow, Tracing
from corral.registry import complete_promotion, reject_promotion
from corral.runtime._control import _engage, _finish, _release, _resume
from corral.runtime._status import RunStatus
from corral.runtime._tables import RunRow

__all__ = ["APPROVAL_EFFECTS", "TENANT_KILL_SWITCH", "RunApprovalEffects", "TenantRunsSwitch"]

_RUNS = cast(Table, RunRow.__table__)
_INSERT_SPANS = cast(Table, SpanRow.__table__).insert()


def _awaiting_run(connection: Connection, approval: Any) -> Any | None:
    """The approval's run if it is paused waiting for exactly this request, locked."""
    if approval.run_id is None:
        return None
    run = connection.execute(
        select(_RUNS)
        .where(_RUNS.c.id == approval.run_id, _RUNS.c.tenant_id == approval.tenant_id)
        .with_for_update()
    ).first()
    if run is None or run.status != "AWAITING_APPROVAL":
        return None
    condition = run.resume_condition or {}
    return run if condition.get("approval_id") == approval.id else None


class RunApprovalEffects:
    """The runtime's :class:`~corral.approvals.ApprovalEffects`: runs and promotions.

    An approved tool call's run is queued again; a rejected or expired one's run ends
    ``REJECTED`` (``approval_rejected`` / ``approval_expired``); a promotion completes or is
    rejected (:func:`corral.registry.complete_promotion`,
    :func:`corral.registry.reject_promotion`).

    Args:
        tracing: Where the run's ``approval.wait`` span goes (from the request's creation to
            its decision, in the run's trace, stored in the decision's transaction and
            exported like every span); ``None``: no span.
    """

    def __init__(self, tracing: Tracing | None = None) -> None:
        self.tracing = tracing

    def _waited(
        self,
        connection: Connection,
        approval: Any,
        run: Any,
        status: str,
        actor: str,
        now: datetime,
    ) -> None:
        """Store the ``approval.wait`` span of the run that waited on ``approval``."""
        if self.tracing is None or run is None:
            return
        rows = self.tracing.record(
            "approval.wait",
            trace_id=run.trace_id,
            start=approval.created_at,
            end=now,
            attributes={
                RUN_ID_ATTRIBUTE: run.id,
                "corral.approval.id": approval.id,
                "corral.approval.status": status,
                "corral.approval.subject": approval.subject,
                "corral.approval.decided_by": actor,
                "corral.policy.decision_id": approval.policy_decision_id,
            },
            tenant_id=run.tenant_id,
            run_id=run.id,
        )
        if rows:
            connection.execute(_INSERT_SPANS, rows)

    def run_statuses(self, connection: Connection, run_ids: set[str]) -> dict[str, str]:
        """The status of each of these runs that exists."""
        runs = connection.execute(select(_RUNS.c.id, _RUNS.c.status).where(_RUNS.c.id.in_(run_ids)))
        return {run.id: run.status for run in runs}

    def run_stage(self, connection: Connection, run_id: str) -> str:
        """The stage the run runs in (``""``: no such run)."""
        stage = connection.execute(
            select(_RUNS.c.stage).where(_RUNS.c.id == run_id)
        ).scalar_one_or_none()
        return str(stage or "")

    def approved(
        self, connection: Connection, approval: Any, approvers: list[str], actor: str, now: datetime
    ) -> None:
        """Complete the promotion, or queue the run paused on ``approval`` again.

        Raises:
            Conflict: the run no longer waits for this request (the vote rolls back).
        """
        if approval.kind == "promotion":
            complete_promotion(connection, approval_id=approval.id, actor=actor, now=now)
            return
        if approval.run_id is None:
            # A call from outside a run (inbound MCP): nothing waits; its caller repeats the
            # call, which this approval then covers once (corral.gateway.tools).
            return
        waiting = _awaiting_run(connection, approval)
        if waiting is None:
            run = connection.execute(
                select(_RUNS.c.status).where(_RUNS.c.id == approval.run_id)
            ).scalar_one_or_none()
            raise Conflict(
                f"Run {approval.run_id!r} is {run or 'gone'}, no longer waiting for approval "
                f"{approval.id!r}; there is nothing to approve."
            )
        _resume(
            connection,
            approval.run_id,
            approval.tenant_id,
            actor,
            {"approval_id": approval.id, "approved_by": approvers},
        )
        self._waited(connection, approval, waiting, "approved", actor, now)

    def ended(
        self,
        connection: Connection,
        approval: Any,
        *,
        status: Literal["rejected", "expired"],
        error: str,
        actor: str,
        now: datetime,
    ) -> None:
        """Reject the promotion, or end the run paused on ``approval`` ``REJECTED``."""
        if approval.kind == "promotion":
            reject_promotion(connection, approval_id=approval.id, actor=actor, now=now)
            return
        run = _awaiting_run(connection, approval)
        if run is not None:
            _finish(connection, [run], RunStatus.REJECTED, f"approval_{status}", error, actor, now)
            self._waited(connection, approval, run, status, actor, now)


class TenantRunsSwitch:
    """The runtime's :class:`~corral.tenancy.TenantKillSwitch`: a ``tenant`` kill switch."""

    def engage(self, connection: Connection, *, tenant_id: str, reason: str, actor: str) -> None:
        """Engage the tenant's kill switch: its queued and paused runs end ``KILLED`` now."""
        _engage(
            connection,
            scope="tenant",
            target=tenant_id,
            tenant_id=tenant_id,
            reason=reason,
            actor=actor,
        )

    def release(self, connection: Connection, *, tenant_id: str, actor: str) -> None:
        """Release the tenant's kill switch.

        Raises:
            NotFound: none is engaged (released by hand already).
        """
        _release(connection, scope="tenant", target=tenant_id, tenant_id=tenant_id, actor=actor)


APPROVAL_EFFECTS = RunApprovalEffects()
"""The effects :mod:`corral.platform` installs for :mod:`corral.approvals`."""
TENANT_KILL_SWITCH = TenantRunsSwitch()
"""The switch the API passes to :func:`corral.tenancy.set_tenant_status`."""
