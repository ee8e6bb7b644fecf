"""The store side of releases: stage bindings, promotion rows and approval requests.

Synchronous Core statements over a ``Connection``, so that the same code runs in a request's
transaction (through ``AsyncSession.run_sync``) and in the approvals service's transaction
(:func:`corral.registry.complete_promotion`). :mod:`corral.registry._releases` decides; this
module writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, select

from corral.audit import AuditRecord, append_events
from corral.errors import Conflict
from corral.policy import PolicyDecision, arguments_digest
from corral.registry._tables import AgentRow, AgentVersionRow, PromotionRow, StageBindingRow
from corral.store import new_id

__all__ = [
    "PROMOTIONS",
    "Promotion",
    "PromotionKind",
    "PromotionStatus",
    "StageBinding",
    "Target",
    "approvals_table",
    "audit_bound",
    "bind",
    "insert_promotion",
    "lock_stage",
    "promotion_of",
    "refuse_while_pending",
    "request_approval",
    "stage_history",
    "version_of",
]

PromotionKind = Literal["promote", "rollback"]
PromotionStatus = Literal["pending_approval", "done", "rejected"]

PROMOTIONS = cast(Table, PromotionRow.__table__)
_AGENTS = cast(Table, AgentRow.__table__)
_VERSIONS = cast(Table, AgentVersionRow.__table__)
_BINDINGS = cast(Table, StageBindingRow.__table__)


@dataclass(frozen=True)
class Promotion:
    """One promotion or rollback of a stage: done, awaiting approval, or rejected.

    Attributes:
        id: The promotion's id (``prom_`` + 32 hex digits).
        agent_name: The agent.
        kind: ``promote`` or ``rollback``.
        stage: The stage it binds.
        version: The version it binds (for a rollback: the version rolled back to).
        digest: ``sha256:<hex>`` of that version's content (versions are immutable).
        previous_version: The version the stage ran before it was done (or, while it awaits
            approval, when it was asked for); ``None`` for a first binding.
        status: ``done``, ``pending_approval`` or ``rejected`` (rejected or expired approval).
        actor: Principal who asked for it.
        created_at: When it was asked for (UTC).
        completed_at: When it was done or rejected (UTC); ``None`` while pending.
        approval_id: The approval request it waits or waited on, if any.
        policy_decision_id: The stored ``agent.promote`` decision that allowed it or asked for
            approval.
        approver_roles: Roles that may approve it (pending or approved promotions only).
        required_approvals: Approvals it needs (0 when it needs none).
    """

    id: str
    agent_name: str
    kind: PromotionKind
    stage: str
    version: str
    digest: str
    previous_version: str | None
    status: PromotionStatus
    actor: str
    created_at: datetime
    completed_at: datetime | None
    approval_id: str | None = None
    policy_decision_id: str | None = None
    approver_roles: tuple[str, ...] = ()
    required_approvals: int = 0


@dataclass(frozen=True)
class StageBinding:
    """The version a stage of an agent runs now.

    Attributes:
        stage: The stage.
        version: The version bound to it.
        digest: ``sha256:<hex>`` of that version's content.
        bound_by: Principal whose promotion, rollback or apply (``dev``) bound it.
        bound_at: When (UTC).
    """

    stage: str
    version: str
    digest: str
    bound_by: str
    bound_at: datetime


@dataclass(frozen=True)
class Target:
    """A version about to be bound to a stage, and who asks."""

    tenant_id: str
    actor: str
    agent_id: str
    agent_name: str
    stage: str
    version_id: str
    version: str
    digest: str

    @property
    def subject(self) -> str:
        """``agent:NAME@VERSION``, the subject of its audit events."""
        return f"agent:{self.agent_name}@{self.version}"


def lock_stage(connection: Connection, agent_id: str, stage: str) -> str | None:
    """The version the stage runs, if any, with the agent's row locked.

    The lock (``FOR UPDATE`` on PostgreSQL; SQLite's writer lock is already held) serialises
    promotions and rollbacks of one agent.
    """
    connection.execute(select(_AGENTS.c.id).where(_AGENTS.c.id == agent_id).with_for_update())
    return connection.execute(
        select(_BINDINGS.c.version).where(
            _BINDINGS.c.agent_id == agent_id, _BINDINGS.c.stage == stage
        )
    ).scalar_one_or_none()


def refuse_while_pending(connection: Connection, target: Target, now: datetime) -> None:
    """One promotion per stage waits for approval at a time (approving two would race)."""
    approvals = approvals_table()
    pending = connection.execute(
        select(PROMOTIONS.c.version, PROMOTIONS.c.approval_id)
        .join(approvals, approvals.c.id == PROMOTIONS.c.approval_id)
        .where(
            PROMOTIONS.c.agent_id == target.agent_id,
            PROMOTIONS.c.stage == target.stage,
            PROMOTIONS.c.status == "pending_approval",
            approvals.c.status == "pending",
            approvals.c.expires_at > now,
        )
    ).first()
    if pending is not None:
        raise Conflict(
            f"A promotion of agent {target.agent_name!r}@{pending.version} to "
            f"{target.stage!r} already awaits approval {pending.approval_id}; approve it with "
            f"`corral approve {pending.approval_id}` or reject it with "
            f"`corral reject {pending.approval_id}` before asking for another.",
            code="promotion_pending",
        )


def approvals_table() -> Table:
    # Imported here, not at the top: the approvals service calls into this module, and a
    # module-level import would make importing either package first a cycle.
    from corral.approvals import ApprovalRow

    return cast(Table, ApprovalRow.__table__)


def bind(connection: Connection, target: Target, now: datetime) -> str | None:
    """Bind the stage to the target version; returns the version bound before, if any."""
    previous = connection.execute(
        select(_BINDINGS.c.id, _BINDINGS.c.version).where(
            _BINDINGS.c.agent_id == target.agent_id, _BINDINGS.c.stage == target.stage
        )
    ).first()
    values = {
        "version_id": target.version_id,
        "version": target.version,
        "bound_by": target.actor,
        "bound_at": now,
    }
    if previous is None:
        connection.execute(
            _BINDINGS.insert().values(
                id=new_id("bind"),
                tenant_id=target.tenant_id,
                agent_id=target.agent_id,
                stage=target.stage,
                **values,
            )
        )
        return None
    connection.execute(_BINDINGS.update().where(_BINDINGS.c.id == previous.id).values(**values))
    return str(previous.version)


def insert_promotion(
    connection: Connection,
    target: Target,
    kind: PromotionKind,
    status: PromotionStatus,
    previous: str | None,
    decision_id: str | None,
    approval_id: str | None,
    now: datetime,
) -> Promotion:
    promotion = Promotion(
        id=new_id("prom"),
        agent_name=target.agent_name,
        kind=kind,
        stage=target.stage,
        version=target.version,
        digest=target.digest,
        previous_version=previous,
        status=status,
        actor=target.actor,
        created_at=now,
        completed_at=None if status == "pending_approval" else now,
        approval_id=approval_id,
        policy_decision_id=decision_id,
    )
    connection.execute(
        PROMOTIONS.insert().values(
            id=promotion.id,
            tenant_id=target.tenant_id,
            agent_id=target.agent_id,
            agent_name=target.agent_name,
            stage=target.stage,
            kind=kind,
            version=target.version,
            previous_version=previous,
            status=status,
            approval_id=approval_id,
            policy_decision_id=decision_id,
            actor=target.actor,
            created_at=now,
            completed_at=promotion.completed_at,
        )
    )
    return promotion


def audit_bound(
    connection: Connection,
    target: Target,
    promotion: Promotion,
    action: str,
    details: dict[str, Any],
) -> None:
    """Audit a binding that took effect (``agent.promoted`` or ``agent.rolled_back``)."""
    record = AuditRecord(
        target.actor,
        action,
        target.subject,
        "success",
        policy_decision_id=promotion.policy_decision_id,
        details={
            "stage": target.stage,
            "version": target.version,
            "digest": target.digest,
            "previous_version": promotion.previous_version,
            "promotion_id": promotion.id,
            **details,
        },
    )
    append_events(connection, target.tenant_id, [record])


def request_approval(
    connection: Connection,
    target: Target,
    decision: PolicyDecision,
    current: str | None,
    expires_at: datetime,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> Promotion:
    """Write the pending promotion, its approval request and their audit events.

    ``extra``: more details for the ``agent.promote`` audit event (the eval gate's result).
    """
    from corral.approvals import approval_request  # the approvals service imports this module

    arguments = {"agent": target.agent_name, "version": target.version, "stage": target.stage}
    request = approval_request(
        decision,
        tenant_id=target.tenant_id,
        kind="promotion",
        action="agent.promote",
        subject=f"agent:{target.agent_name}@{target.version}->{target.stage}",
        arguments=arguments,
        requested_by=target.actor,
        now=now,
        expires_at=expires_at,
    )
    approval_id, required = request.id, request.required_approvals
    connection.execute(approvals_table().insert(), [request.as_row()])
    promotion = insert_promotion(
        connection, target, "promote", "pending_approval", current, decision.id, approval_id, now
    )
    details = {
        "stage": target.stage,
        "digest": target.digest,
        "promotion_id": promotion.id,
        "approval_id": approval_id,
        "approver_roles": list(decision.approver_roles),
        "required_approvals": required,
        "policies": list(decision.determining_policies),
        **(extra or {}),
    }
    append_events(
        connection,
        target.tenant_id,
        [
            AuditRecord(
                target.actor,
                "agent.promote",
                target.subject,
                "pending_approval",
                policy_decision_id=decision.id,
                details=details,
            ),
            AuditRecord(
                target.actor,
                "approval.requested",
                f"approval:{approval_id}",
                "pending",
                policy_decision_id=decision.id,
                details={"kind": "promotion", "arguments_digest": arguments_digest(arguments)},
            ),
        ],
    )
    return replace(
        promotion, approver_roles=tuple(decision.approver_roles), required_approvals=required
    )


def version_of(connection: Connection, agent_id: str, version: str) -> tuple[str, str]:
    """``(id, digest)`` of a version of the agent (versions are never deleted)."""
    row = connection.execute(
        select(_VERSIONS.c.id, _VERSIONS.c.digest).where(
            _VERSIONS.c.agent_id == agent_id, _VERSIONS.c.version == version
        )
    ).one()
    return str(row.id), str(row.digest)


def promotion_of(
    row: Any, digest: str | None, approver_roles: Iterable[str] = (), required_approvals: int = 0
) -> Promotion:
    """A :class:`Promotion` from a ``promotions`` row (ORM object or Core row)."""
    return Promotion(
        id=row.id,
        agent_name=row.agent_name,
        kind=row.kind,
        stage=row.stage,
        version=row.version,
        digest=digest or "",
        previous_version=row.previous_version,
        status=row.status,
        actor=row.actor,
        created_at=row.created_at,
        completed_at=row.completed_at,
        approval_id=row.approval_id,
        policy_decision_id=row.policy_decision_id,
        approver_roles=tuple(approver_roles),
        required_approvals=required_approvals,
    )


def stage_history(connection: Connection, agent_id: str, stage: str) -> list[str]:
    """The stage's versions as a stack: promotions push, rollbacks pop (oldest first)."""
    rows = connection.execute(
        select(PROMOTIONS.c.kind, PROMOTIONS.c.version, PROMOTIONS.c.previous_version)
        .where(
            PROMOTIONS.c.agent_id == agent_id,
            PROMOTIONS.c.stage == stage,
            PROMOTIONS.c.status == "done",
        )
        .order_by(PROMOTIONS.c.completed_at, PROMOTIONS.c.created_at)
    )
    stack: list[str] = []
    for kind, version, previous in rows:
        if kind == "rollback":
            stack = stack[:-1]
        elif not stack and previous is not None:
            stack.append(previous)  # bound before the first recorded promotion
        if not stack or stack[-1] != version:  # binding the version already bound adds nothing
            stack.append(version)
    return stack
