"""Releases: promote an agent version to a stage, roll a stage back, and their history.

A stage (``dev``, ``staging``, ``production``..., from settings ``governance.stages``) binds
one immutable, content-addressed version of an agent; runs in that stage run that version.
``dev`` follows the latest applied version by itself; every other stage changes only here:

* :func:`promote` is governed by ``agent.promote`` (context ``stage`` = the stage promoted
  to). ``allow`` binds the stage at once; ``require_approval`` records a pending promotion and
  an approval request (kind ``promotion``), which the approvals service settles in its own
  transaction with :func:`complete_promotion` or :func:`reject_promotion`; ``deny`` refuses.
* :func:`rollback` re-binds a stage to the version it ran before, undoing promotions one at a
  time. It is the emergency exit: it needs the same permission as a promotion, but never
  waits for approvals. When policy would ask for approvals, the approval-forbids are
  evaluated as granted; both decisions are stored and the audit event names the waived
  policies (``approvals_waived``).

Every outcome leaves evidence: the stored policy decision, a :class:`PromotionRow` and an
audit event, written in the transaction of the action. A refusal is written after the
rollback of that transaction, by the caller, through ``PolicyRefused.record``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import AuditRecord, append_events
from corral.contracts import Agent
from corral.errors import Conflict, InvalidRequest, NotFound, PolicyDenied, PolicyRefused
from corral.policy import (
    EntityRef,
    Governance,
    PolicyContext,
    PolicyDecision,
    PolicyRequest,
    agent_entity,
    decision_row,
    insert_decisions,
    principal_ref,
)
from corral.registry._bindings import (
    PROMOTIONS,
    Promotion,
    PromotionKind,
    PromotionStatus,
    StageBinding,
    Target,
    approvals_table,
    audit_bound,
    bind,
    insert_promotion,
    lock_stage,
    promotion_of,
    refuse_while_pending,
    request_approval,
    stage_history,
    version_of,
)
from corral.registry._gate import EvalLookup, GateResult, check_gate
from corral.registry._service import digest_of, get_agent, get_agent_version
from corral.registry._tables import AgentVersionRow, PromotionRow, StageBindingRow
from corral.settings import GovernanceSettings
from corral.store import utcnow

__all__ = [
    "DEV_STAGE",
    "Promotion",
    "PromotionKind",
    "PromotionStatus",
    "StageBinding",
    "complete_promotion",
    "list_promotions",
    "promote",
    "reject_promotion",
    "rollback",
    "stage_bindings",
]

DEV_STAGE = "dev"
"""The stage that follows the latest applied version; never promoted to or rolled back."""


# -- promote -----------------------------------------------------------------------------------


async def promote(
    session: AsyncSession,
    governance: Governance,
    *,
    tenant_id: str,
    actor: str,
    agent_name: str,
    version: str,
    stage: str,
    stages: Sequence[str] | None = None,
    approval_ttl: timedelta | None = None,
    actor_roles: Iterable[str] | None = None,
    evals: EvalLookup | None = None,
    gate_stages: Sequence[str] | None = None,
    require_eval_for_production: bool | None = None,
) -> Promotion:
    """Promote ``agent_name@version`` to ``stage``, in the caller's transaction.

    Policy decides ``agent.promote`` (principal ``actor``, resource the agent, context
    ``stage`` = ``stage``) and the decision is stored. ``allow``: the stage is bound now, a
    ``done`` promotion and audit event ``agent.promoted`` are written. ``require_approval``:
    a ``pending_approval`` promotion, an approval request (kind ``promotion``, subject
    ``agent:NAME@VERSION->STAGE``, expiring after ``approval_ttl``) and audit events
    ``agent.promote`` (outcome ``pending_approval``) and ``approval.requested`` are written;
    the stage is bound when the approvals service calls :func:`complete_promotion`.

    Args:
        session: A session inside the caller's transaction.
        governance: Decides ``agent.promote``.
        tenant_id: Tenant of the caller.
        actor: Principal asking (``user:alice``).
        agent_name: The agent.
        version: The version to promote; it must exist and be neither a draft nor retired.
        stage: A configured stage other than ``dev``.
        stages: The configured stages (settings ``governance.stages``); ``None``: defaults.
        approval_ttl: Lifetime of an approval request; ``None``: the settings default.
        actor_roles: The actor's roles in the tenant (Cedar ``principal.roles``).
        evals: Reads the latest eval of a digest on a suite (``corral.evals.latest_eval``);
            ``None``: a promotion to a gated stage of an agent with an ``evaluation`` block
            is refused (fail closed).
        gate_stages: Stages the eval gate applies to (settings ``governance.eval_gate_stages``);
            ``None``: the settings default.
        require_eval_for_production: Refuse ``production`` to an agent without an
            ``evaluation`` block (settings ``governance.require_eval_for_production``);
            ``None``: the settings default.

    The eval gate (:mod:`corral.registry._gate`) runs before policy; its result is in the
    ``agent.promote`` context (``eval_passed``, ``eval_score``) and the audit event, and a
    matched ``manual_review_required_if`` condition adds an approval (role
    ``evaluation.reviewer_role``) to a promotion policy allows.

    Returns:
        The promotion, ``done`` or ``pending_approval`` (with its approval id, approver roles
        and required approvals).

    Raises:
        InvalidRequest: ``stage`` is not configured, or is ``dev``.
        NotFound: no such agent (listing the agents) or version (listing the versions).
        Conflict: the stage already runs this version; another promotion to the stage awaits
            approval; the stored version no longer matches its digest; or the eval gate
            refuses (``eval_gate_failed``, ``eval_baseline_missing``, ``eval_gate_unavailable``).
        PolicyDenied: the version is a draft or retired.
        PolicyRefused: policy denies the promotion (call its ``record`` after the rollback).
    """
    defaults = GovernanceSettings()
    _check_stage(agent_name, stage, defaults.stages if stages is None else stages, "promoted to")
    agent, row = await get_agent_version(session, agent_name, version, tenant_id=tenant_id)
    spec = _promotable_spec(agent_name, row, stage)
    gate = await check_gate(
        session,
        evals,
        tenant_id=tenant_id,
        agent_id=agent.id,
        agent_name=agent_name,
        version=row.version,
        digest=row.digest,
        spec=spec,
        stage=stage,
        gate_stages=defaults.eval_gate_stages if gate_stages is None else gate_stages,
        require_eval_for_production=(
            defaults.require_eval_for_production
            if require_eval_for_production is None
            else require_eval_for_production
        ),
    )
    decision, stored = await _decide(
        governance,
        tenant_id,
        actor,
        agent_name,
        spec,
        stage,
        actor_roles=actor_roles,
        session=session,
        gate=gate,
    )
    if decision.decision == "deny":
        raise _refusal(
            decision,
            stored,
            tenant_id=tenant_id,
            actor=actor,
            action="agent.promote",
            subject=f"agent:{agent_name}@{row.version}",
            what=f"promote agent {agent_name!r}@{row.version} to {stage!r}",
            details={"stage": stage, "digest": row.digest, **gate.details()},
        )
    target = Target(tenant_id, actor, agent.id, agent_name, stage, row.id, row.version, row.digest)
    ttl = approval_ttl or timedelta(seconds=defaults.approval_ttl_seconds)
    decision = _with_review(decision, gate, spec)
    return await session.run_sync(
        lambda sync: _write_promotion(sync.connection(), target, decision, stored, ttl, gate)
    )


def _with_review(decision: PolicyDecision, gate: GateResult, spec: Any) -> PolicyDecision:
    """``decision``, asking a reviewer too when a manual-review condition matched."""
    if not gate.review_reasons or decision.decision == "deny":
        return decision
    reasons = [f"manual review required: {', '.join(gate.review_reasons)}"]
    if decision.decision == "require_approval":
        return replace(decision, reasons=[*decision.reasons, *reasons])
    return replace(
        decision,
        decision="require_approval",
        reasons=reasons,
        approver_roles=[spec.evaluation.reviewer_role],
        required_approvals=1,
    )


def _check_stage(agent_name: str, stage: str, stages: Sequence[str], verb: str) -> None:
    if stage not in stages:
        raise InvalidRequest(
            f"Unknown stage {stage!r}; the configured stages are {', '.join(stages)} "
            "(settings governance.stages, CORRAL_GOVERNANCE__STAGES).",
            code="unknown_stage",
        )
    if stage == DEV_STAGE:
        raise InvalidRequest(
            f"Stage 'dev' follows the latest applied version of agent {agent_name!r} and "
            f"cannot be {verb}; apply a new version with `corral apply -f FILE`, or run an "
            "older one in dev with `corral run ... --version VERSION`.",
            code="stage_follows_latest",
        )


def _promotable_spec(agent_name: str, row: AgentVersionRow, stage: str) -> Any:
    """The version's spec, once its content matches its digest and its status allows it."""
    contract = Agent.model_validate(row.document)
    if digest_of(contract) != row.digest:
        raise Conflict(
            f"Agent {agent_name!r}@{row.version} does not match its digest {row.digest}: the "
            "stored version was changed after it was applied, so it cannot be promoted; "
            "apply the spec again to make a new version.",
            code="version_digest_mismatch",
        )
    status = contract.spec.status
    if status == "draft":
        raise PolicyDenied(
            f"Agent {agent_name!r}@{row.version} is a draft and cannot be promoted to "
            f"{stage!r}; apply it with status 'active' (a new version) and promote that.",
            code="agent_draft",
        )
    if status == "retired":
        raise PolicyDenied(
            f"Agent {agent_name!r}@{row.version} is retired and cannot be promoted; promote "
            "an active version instead.",
            code="agent_retired",
        )
    return contract.spec


async def _decide(
    governance: Governance,
    tenant_id: str,
    actor: str,
    agent_name: str,
    spec: Any,
    stage: str,
    approvals_granted: Iterable[str] = (),
    *,
    actor_roles: Iterable[str] | None = None,
    session: AsyncSession | None = None,
    gate: GateResult | None = None,
) -> tuple[PolicyDecision, dict[str, Any]]:
    """Decide ``agent.promote``; returns the decision and its ``policy_decisions`` row.

    ``session``: the caller's transaction, which loads the tenant's policies on a cold cache.
    """
    request = PolicyRequest(
        principal=principal_ref(actor),
        action="agent.promote",
        resource=EntityRef("Agent", agent_name),
        context=PolicyContext(
            tenant=tenant_id,
            stage=stage,
            requester=actor,
            eval_passed=None if gate is None else gate.passed,
            eval_score=None if gate is None or gate.score is None else Decimal(str(gate.score)),
        ),
    )
    entities = [
        governance.principal_entity(actor, tenant_id, roles=actor_roles),
        agent_entity(agent_name, tenant_id, spec),
    ]
    decision = await governance.decide(
        tenant_id, request, entities, approvals_granted=approvals_granted, session=session
    )
    return decision, decision_row(decision, request, tenant_id=tenant_id, run_id=None)


def _refusal(
    decision: PolicyDecision,
    stored: dict[str, Any],
    *,
    tenant_id: str,
    actor: str,
    action: str,
    subject: str,
    what: str,
    details: dict[str, Any],
) -> PolicyRefused:
    """The error for a denied decision; its ``record`` stores the decision and audit event."""
    audit = AuditRecord(
        actor,
        action,
        subject,
        "denied",
        policy_decision_id=decision.id,
        details={
            **details,
            "decision": decision.decision,
            "policies": list(decision.determining_policies),
        },
    )
    because = "; ".join(decision.reasons) or "no policy permits it"
    return PolicyRefused(
        f"Policy does not allow {actor} to {what} (decision {decision.decision}): {because} "
        f"(policies: {', '.join(decision.determining_policies) or 'default deny'}; "
        f"decision {decision.id}).",
        decision_id=decision.id,
        record=functools.partial(_record_refusal, row=stored, tenant_id=tenant_id, audit=audit),
    )


def _record_refusal(
    connection: Connection, *, row: dict[str, Any], tenant_id: str, audit: AuditRecord
) -> None:
    insert_decisions(connection, [row])
    append_events(connection, tenant_id, [audit])


def _write_promotion(
    connection: Connection,
    target: Target,
    decision: PolicyDecision,
    stored: dict[str, Any],
    approval_ttl: timedelta,
    gate: GateResult,
) -> Promotion:
    """Bind now or ask for approval, with the agent row locked against concurrent changes."""
    now = utcnow()
    current = lock_stage(connection, target.agent_id, target.stage)
    if current == target.version:
        raise Conflict(
            f"Stage {target.stage!r} of agent {target.agent_name!r} already runs "
            f"{target.version}; there is nothing to promote.",
            code="already_promoted",
        )
    refuse_while_pending(connection, target, now)
    insert_decisions(connection, [stored])
    if decision.decision == "allow":
        previous = bind(connection, target, now)
        promotion = insert_promotion(
            connection, target, "promote", "done", previous, decision.id, None, now
        )
        audit_bound(connection, target, promotion, "agent.promoted", gate.details())
        return promotion
    return request_approval(
        connection, target, decision, current, now + approval_ttl, now, gate.details()
    )


# -- settling a pending promotion (called by the approvals service) ------------------------------


def complete_promotion(
    connection: Connection, *, approval_id: str, actor: str, now: datetime
) -> Promotion:
    """Bind the stage of the promotion that waited on ``approval_id`` (now approved).

    Called by the approvals service inside its transaction when the approval request reaches
    its required approvals. The stage is bound, the promotion becomes ``done`` (its
    ``previous_version`` is the version the stage ran just before) and audit event
    ``agent.promoted`` is appended, referencing the original ``agent.promote`` decision.

    Args:
        connection: A connection inside the caller's transaction.
        approval_id: The approval request (kind ``promotion``) that was approved.
        actor: Principal whose approval completed it (the audit event's actor).
        now: The time of the approval (timezone-aware UTC).

    Returns:
        The promotion, ``done``.

    Raises:
        NotFound: no promotion waits on ``approval_id``.
        Conflict: the promotion is no longer pending (done or rejected already).
    """
    row = _pending_promotion(connection, approval_id)
    lock_stage(connection, row.agent_id, row.stage)
    version_id, digest = version_of(connection, row.agent_id, row.version)
    target = Target(
        row.tenant_id,
        actor,
        row.agent_id,
        row.agent_name,
        row.stage,
        version_id,
        row.version,
        digest,
    )
    previous = bind(connection, target, now)
    connection.execute(
        PROMOTIONS.update()
        .where(PROMOTIONS.c.id == row.id)
        .values(status="done", previous_version=previous, completed_at=now)
    )
    promotion = replace(
        promotion_of(row, digest), status="done", previous_version=previous, completed_at=now
    )
    audit_bound(
        connection,
        target,
        promotion,
        "agent.promoted",
        {"approval_id": approval_id, "requested_by": row.actor},
    )
    return promotion


def reject_promotion(
    connection: Connection, *, approval_id: str, actor: str, now: datetime
) -> Promotion:
    """End the promotion that waited on ``approval_id`` (rejected or expired), unbound.

    Called by the approvals service inside its transaction. The promotion becomes
    ``rejected`` and audit event ``agent.promotion_rejected`` is appended, with outcome
    ``expired`` when the approval request expired (its status is ``expired``, or it is still
    ``pending`` past its expiry) and ``rejected`` otherwise.

    Args:
        connection: A connection inside the caller's transaction.
        approval_id: The approval request (kind ``promotion``) that was rejected or expired.
        actor: Principal who rejected it (``system`` for an expiry).
        now: The time of the rejection or expiry (timezone-aware UTC).

    Returns:
        The promotion, ``rejected``.

    Raises:
        NotFound: no promotion waits on ``approval_id``.
        Conflict: the promotion is no longer pending (done or rejected already).
    """
    row = _pending_promotion(connection, approval_id)
    approvals = approvals_table()
    approval = connection.execute(
        select(approvals.c.status, approvals.c.expires_at).where(approvals.c.id == approval_id)
    ).first()
    expired = approval is not None and (
        approval.status == "expired"
        or (approval.status == "pending" and approval.expires_at <= now)
    )
    connection.execute(
        PROMOTIONS.update()
        .where(PROMOTIONS.c.id == row.id)
        .values(status="rejected", completed_at=now)
    )
    _, digest = version_of(connection, row.agent_id, row.version)
    record = AuditRecord(
        actor,
        "agent.promotion_rejected",
        f"agent:{row.agent_name}@{row.version}",
        "expired" if expired else "rejected",
        policy_decision_id=row.policy_decision_id,
        details={
            "stage": row.stage,
            "promotion_id": row.id,
            "approval_id": approval_id,
            "requested_by": row.actor,
        },
    )
    append_events(connection, row.tenant_id, [record])
    return replace(promotion_of(row, digest), status="rejected", completed_at=now)


def _pending_promotion(connection: Connection, approval_id: str) -> Any:
    row = connection.execute(
        select(PROMOTIONS).where(PROMOTIONS.c.approval_id == approval_id).with_for_update()
    ).first()
    if row is None:
        raise NotFound(
            f"No promotion waits on approval {approval_id!r}.",
            kind="promotion",
            name=approval_id,
        )
    if row.status != "pending_approval":
        raise Conflict(
            f"Promotion {row.id} of agent {row.agent_name!r}@{row.version} to {row.stage!r} "
            f"is already {row.status}; approval {approval_id} cannot change it.",
            code="promotion_settled",
        )
    return row


# -- rollback ----------------------------------------------------------------------------------


async def rollback(
    session: AsyncSession,
    governance: Governance,
    *,
    tenant_id: str,
    actor: str,
    agent_name: str,
    stage: str,
    stages: Sequence[str] | None = None,
    actor_roles: Iterable[str] | None = None,
) -> Promotion:
    """Re-bind ``stage`` to the version it ran before its current one, in the caller's transaction.

    The history of done promotions and rollbacks of the stage is replayed as a stack (a
    promotion pushes its version, a rollback pops one), so a second rollback goes one
    version further back. Needs ``agent.promote`` permission for the stage, but never
    approvals: a rollback is the emergency exit. When the decision is ``require_approval`` it
    is stored, the request is decided again with those approval-forbids granted, and the
    audit event ``agent.rolled_back`` lists them as ``approvals_waived``.

    Args:
        session: A session inside the caller's transaction.
        governance: Decides ``agent.promote``.
        tenant_id: Tenant of the caller.
        actor: Principal asking.
        agent_name: The agent.
        stage: A configured stage other than ``dev``.
        stages: The configured stages (settings ``governance.stages``); ``None``: defaults.
        actor_roles: The actor's roles in the tenant (Cedar ``principal.roles``).

    Returns:
        The rollback, ``done``: ``version`` is the version now bound, ``previous_version``
        the one rolled back from.

    Raises:
        InvalidRequest: ``stage`` is not configured, or is ``dev``.
        NotFound: no such agent, or nothing is bound to the stage.
        Conflict: there is no earlier version to roll back to, or the binding was changed
            outside promotions.
        PolicyRefused: policy denies promoting to the stage (call its ``record`` after the
            rollback of the transaction).
    """
    defaults = GovernanceSettings()
    _check_stage(agent_name, stage, defaults.stages if stages is None else stages, "rolled back")
    agent, latest = await get_agent_version(session, agent_name, tenant_id=tenant_id)
    spec = Agent.model_validate(latest.document).spec
    decision, stored = await _decide(
        governance,
        tenant_id,
        actor,
        agent_name,
        spec,
        stage,
        actor_roles=actor_roles,
        session=session,
    )
    rows, waived = [stored], []
    if decision.decision == "require_approval":
        waived = list(decision.determining_policies)
        decision, granted = await _decide(
            governance,
            tenant_id,
            actor,
            agent_name,
            spec,
            stage,
            approvals_granted=waived,
            session=session,
        )
        rows.append(granted)
    if decision.decision != "allow":
        raise _refusal(
            decision,
            rows[-1],
            tenant_id=tenant_id,
            actor=actor,
            action="agent.rollback",
            subject=f"agent:{agent_name}",
            what=f"roll back stage {stage!r} of agent {agent_name!r}",
            details={"stage": stage},
        )
    # The version to roll back to is found under the agent's lock, in the write.
    plan = Target(tenant_id, actor, agent.id, agent_name, stage, "", "", "")
    return await session.run_sync(
        lambda sync: _write_rollback(sync.connection(), plan, rows, decision.id, waived)
    )


def _write_rollback(
    connection: Connection,
    plan: Target,
    decisions: list[dict[str, Any]],
    decision_id: str,
    waived: list[str],
) -> Promotion:
    """Find the version to roll back to under the agent's lock, bind it, record it."""
    now = utcnow()
    wanted = _rollback_target(connection, plan)
    version_id, digest = version_of(connection, plan.agent_id, wanted)
    target = replace(plan, version_id=version_id, version=wanted, digest=digest)
    insert_decisions(connection, decisions)
    previous = bind(connection, target, now)
    promotion = insert_promotion(
        connection, target, "rollback", "done", previous, decision_id, None, now
    )
    details: dict[str, Any] = {}
    if waived:
        details = {"approvals_waived": waived, "waived_decision_id": decisions[0]["id"]}
    audit_bound(connection, target, promotion, "agent.rolled_back", details)
    return promotion


def _rollback_target(connection: Connection, plan: Target) -> str:
    name, stage = plan.agent_name, plan.stage
    current = lock_stage(connection, plan.agent_id, stage)
    if current is None:
        raise NotFound(
            f"Agent {name!r} has no version promoted to {stage!r}; there is nothing to roll back.",
            kind="stage_binding",
            name=f"{name}:{stage}",
        )
    history = stage_history(connection, plan.agent_id, stage)
    if not history or history[-1] != current:
        raise Conflict(
            f"Stage {stage!r} of agent {name!r} runs {current}, which no recorded promotion "
            "bound, so there is no history to roll back along; promote the version you want "
            f"with `corral promote {name}@VERSION --to {stage}`.",
            code="rollback_unavailable",
        )
    if len(history) < 2:
        raise Conflict(
            f"Stage {stage!r} of agent {name!r} has nothing earlier to roll back to: "
            f"{current} is the first version it ran (history: `corral promotions {name}`); "
            f"promote another version with `corral promote {name}@VERSION --to {stage}`.",
            code="rollback_unavailable",
        )
    return history[-2]


# -- reading -----------------------------------------------------------------------------------


async def list_promotions(
    session: AsyncSession, agent_name: str, *, tenant_id: str, limit: int = 100
) -> list[Promotion]:
    """The agent's promotions and rollbacks in every stage, newest first.

    Pending ones carry their approver roles and required approvals.

    Raises:
        NotFound: no such agent (listing the agents).
    """
    agent = await get_agent(session, agent_name, tenant_id=tenant_id)
    approvals = approvals_table()
    query = (
        select(
            PromotionRow,
            AgentVersionRow.digest,
            approvals.c.approver_roles,
            approvals.c.required_approvals,
        )
        .outerjoin(
            AgentVersionRow,
            (AgentVersionRow.agent_id == PromotionRow.agent_id)
            & (AgentVersionRow.version == PromotionRow.version),
        )
        .outerjoin(approvals, approvals.c.id == PromotionRow.approval_id)
        .where(PromotionRow.agent_id == agent.id)
        .order_by(PromotionRow.created_at.desc(), PromotionRow.id.desc())
        .limit(limit)
    )
    return [
        promotion_of(row, digest, approver_roles=roles or (), required_approvals=required or 0)
        for row, digest, roles, required in await session.execute(query)
    ]


async def stage_bindings(
    session: AsyncSession, agent_name: str, *, tenant_id: str, stages: Sequence[str] = ()
) -> list[StageBinding]:
    """The version each stage of the agent runs now.

    Args:
        session: A session.
        agent_name: The agent.
        tenant_id: Tenant of the caller.
        stages: Order to list stages in (settings ``governance.stages``); stages not in it
            come last, by name.

    Raises:
        NotFound: no such agent (listing the agents).
    """
    agent = await get_agent(session, agent_name, tenant_id=tenant_id)
    rows = await session.execute(
        select(StageBindingRow, AgentVersionRow.digest)
        .join(AgentVersionRow, AgentVersionRow.id == StageBindingRow.version_id)
        .where(StageBindingRow.agent_id == agent.id)
    )
    order = {stage: index for index, stage in enumerate(stages)}
    bindings = [
        StageBinding(row.stage, row.version, digest, row.bound_by, row.bound_at)
        for row, digest in rows
    ]
    return sorted(bindings, key=lambda b: (order.get(b.stage, len(order)), b.stage))


async def stage_versions(
    session: AsyncSession,
    agent_ids: Sequence[str],
    *,
    tenant_id: str,
    stages: Sequence[str] = (),
) -> dict[str, list[tuple[str, str]]]:
    """The ``(stage, version)`` pairs each of ``agent_ids`` runs now, in one query.

    Args:
        session: A session.
        agent_ids: Agent ids of ``tenant_id`` (ids of another tenant find nothing).
        tenant_id: Tenant of the caller.
        stages: Order to list stages in (settings ``governance.stages``); stages not in it
            come last, by name.

    Returns:
        Agent id -> its bound stages in that order; an agent bound to no stage is absent.
    """
    if not agent_ids:
        return {}
    rows = await session.execute(
        select(StageBindingRow.agent_id, StageBindingRow.stage, StageBindingRow.version).where(
            StageBindingRow.tenant_id == tenant_id, StageBindingRow.agent_id.in_(agent_ids)
        )
    )
    order = {stage: index for index, stage in enumerate(stages)}
    found: dict[str, list[tuple[str, str]]] = {}
    for agent_id, stage, version in rows:
        found.setdefault(agent_id, []).append((stage, version))
    for pairs in found.values():
        pairs.sort(key=lambda pair: (order.get(pair[0], len(order)), pair[0]))
    return found
