"""Approval requests: the one constructor of the row a ``require_approval`` decision raises.

A tool call in a managed run, a tool call through inbound ``/mcp`` and a promotion all raise
their request with :func:`approval_request`; the caller stores :meth:`ApprovalRequest.as_row`
in the transaction that records the decision (DESIGN.md, "Approvals").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from corral.policy import PolicyDecision, arguments_digest, redact
from corral.store import new_id

__all__ = ["ApprovalKind", "ApprovalRequest", "approval_request"]

ApprovalKind = Literal["tool_call", "promotion"]
"""What an approval request is for."""


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One ``approvals`` row, pending.

    Attributes:
        id: ``apr_...``.
        tenant_id: Tenant of the governed action.
        kind: ``tool_call`` or ``promotion``.
        action: The Cedar action approved (``tool.call``, ``agent.promote``).
        subject: What is acted on (``tool:git.commit``, ``agent:x@1.2.0->production``).
        arguments_redacted: The arguments with secret-looking values replaced, for approvers.
        arguments_digest: ``sha256:<hex>`` of the canonical arguments: only exactly these may
            run under the approval.
        reason: Why approval is needed (the policies' reasons).
        approver_roles: Roles whose holders may approve.
        required_approvals: Approvals needed (at least 1).
        policy_ids: The policies (or contract rules) the approval lifts.
        policy_decision_id: The ``require_approval`` decision.
        requested_by: The principal that asked (the run's requester, the caller).
        expires_at: When it expires unapproved (UTC).
        created_at: When it was raised (UTC).
        run_id: The run, for a call in a managed run.
        step_index: The run's step, for a call in a managed run.
        call_index: The call's position in the step, for a call in a managed run.
        idempotency_key: The call's key in a managed run; ``None`` until spent for a direct call.
        status: ``pending``.
        decided_at: ``None`` until decided.
    """

    id: str
    tenant_id: str
    kind: ApprovalKind
    action: str
    subject: str
    arguments_redacted: dict[str, Any]
    arguments_digest: str
    reason: str
    approver_roles: list[str]
    required_approvals: int
    policy_ids: list[str]
    policy_decision_id: str
    requested_by: str
    expires_at: datetime
    created_at: datetime
    run_id: str | None = None
    step_index: int | None = None
    call_index: int | None = None
    idempotency_key: str | None = None
    status: str = "pending"
    decided_at: datetime | None = None

    def as_row(self) -> dict[str, Any]:
        """The values to insert into ``approvals``, by column name."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def approval_request(
    decision: PolicyDecision,
    *,
    tenant_id: str,
    kind: ApprovalKind,
    action: str,
    subject: str,
    arguments: Mapping[str, Any],
    requested_by: str,
    now: datetime,
    expires_at: datetime,
    run_id: str | None = None,
    step_index: int | None = None,
    call_index: int | None = None,
    idempotency_key: str | None = None,
) -> ApprovalRequest:
    """The approval request a ``require_approval`` decision raises for one action.

    Args:
        decision: The ``require_approval`` decision (reasons, roles, count, policies).
        tenant_id: Tenant of the action.
        kind: ``tool_call`` or ``promotion``.
        action: The Cedar action (``tool.call``, ``agent.promote``).
        subject: What is acted on (``tool:NAME``...).
        arguments: The action's arguments; stored redacted, and bound by their digest.
        requested_by: The principal asking.
        now: Current UTC time (``created_at``).
        expires_at: When the request expires unapproved (UTC).
        run_id: The run of a call in a managed run.
        step_index: Its step.
        call_index: Its position in the step.
        idempotency_key: Its idempotency key.

    Returns:
        The request, with a new ``apr_...`` id.
    """
    return ApprovalRequest(
        id=new_id("apr"),
        tenant_id=tenant_id,
        kind=kind,
        action=action,
        subject=subject,
        arguments_redacted=redact(dict(arguments)),
        arguments_digest=arguments_digest(arguments),
        reason="; ".join(decision.reasons) or "policy requires approval",
        approver_roles=list(decision.approver_roles),
        required_approvals=max(decision.required_approvals, 1),
        policy_ids=list(decision.determining_policies),
        policy_decision_id=decision.id,
        requested_by=requested_by,
        expires_at=expires_at,
        created_at=now,
        run_id=run_id,
        step_index=step_index,
        call_index=call_index,
        idempotency_key=idempotency_key,
    )
