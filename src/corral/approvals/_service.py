"""Deciding approval requests: votes by principals holding a role, expiry, and their effects.

A request is raised by the runtime (a ``require_approval`` decision on a tool call pauses the
run ``AWAITING_APPROVAL``) or by a promotion. People vote on it here; each operation is one
transaction holding the vote, the request's new status, the effect on the run or promotion, and
their audit events (DESIGN.md, "Approvals"):

* only a principal holding one of the request's ``approver_roles`` may vote;
* votes count *accountable humans*, not credentials: a service account's or agent key's vote
  is its creator's (``corral.tenancy``, "accountable humans"), so one person holding several
  keys is one voter;
* a service account votes only where policy explicitly allows it: Cedar action
  ``approval.decide`` with principal ``ServiceAccount::"service:<name>"``, resource
  ``Tool::"<tool>"`` (a tool call) or ``Agent::"<agent>"`` (a promotion), and the context's
  ``tenant``, ``stage`` and ``requester``; no shipped policy permits it, and the resource's
  attributes are not loaded (match it by id). Agent identities never vote;
* the principal who requested the run (or promotion) and its accountable humans may not
  approve it;
* one vote per principal and per accountable human;
* ``required_approvals`` distinct approving accountable humans approve it: a tool call's run is
  queued again and re-evaluates policy with the approved policies lifted for exactly the
  approved call (its call index and argument digest); a promotion completes;
* one rejection rejects it: the run ends ``REJECTED`` (``approval_rejected``);
* a request not decided by ``expires_at`` expires: the run ends ``REJECTED``
  (``approval_expired``).

A tool call from outside a run (inbound MCP, ``run_id`` ``None``) has no run to resume: once
approved, its caller repeats exactly that call before ``expires_at`` and the call spends the
approval (:mod:`corral.gateway.tools._direct`).

What a decision does to the run or promotion waiting on a request is an :class:`ApprovalEffects`
given by the composition root (``corral.platform`` installs the runtime's): the runtime and the
registry raise requests, so approvals build on neither.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, cast

from sqlalchemy import Connection, Table, select

from corral.approvals._tables import ApprovalRow, ApprovalVoteRow
from corral.audit import AuditRecord, append_events
from corral.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from corral.observability import count_run_finished, observe_approval_wait
from corral.policy import (
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    decision_row,
    insert_decisions,
    principal_ref,
)
from corral.store import SYSTEM, Store, new_id, skip_locked, utcnow
from corral.tenancy import accountable_humans

__all__ = [
    "APPROVAL_STATUSES",
    "Approval",
    "ApprovalEffects",
    "ApprovalStatus",
    "ApprovalVote",
    "Vote",
    "decide_approval",
    "expire_approvals",
    "get_approval",
    "install_approval_effects",
    "list_approvals",
]

ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "withdrawn"]
Vote = Literal["approve", "reject"]

APPROVAL_STATUSES: tuple[ApprovalStatus, ...] = (
    "pending",
    "approved",
    "rejected",
    "expired",
    "withdrawn",
)
"""Every status a request can be in; only ``pending`` ones can be voted on."""

_APPROVALS = cast(Table, ApprovalRow.__table__)
_VOTES = cast(Table, ApprovalVoteRow.__table__)

_EXPIRE_BATCH = 100
"""Requests one sweep expires at most (the next sweep takes the rest)."""


class ApprovalEffects(Protocol):
    """What deciding a request does to the run or promotion waiting on it.

    Every method runs on the decision's connection, inside its transaction (a failure rolls the
    vote back). ``approval`` is the request's row (``kind``, ``run_id``, ``tenant_id``, ...).
    """

    def run_statuses(self, connection: Connection, run_ids: set[str]) -> dict[str, str]:
        """The status of each of these runs that exists (``{"run_...": "AWAITING_APPROVAL"}``)."""
        ...

    def run_stage(self, connection: Connection, run_id: str) -> str:
        """The stage a run runs in (``""``: no such run)."""
        ...

    def approved(
        self, connection: Connection, approval: Any, approvers: list[str], actor: str, now: datetime
    ) -> None:
        """Let the run (queued again) or promotion (completed) waiting on ``approval`` go on.

        Raises:
            Conflict: the request's run no longer waits for it.
        """
        ...

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
        """End what waited on a rejected or expired request (run REJECTED, promotion rejected)."""
        ...


_installed: list[ApprovalEffects] = []


def install_approval_effects(effects: ApprovalEffects) -> None:
    """Make ``effects`` the default of every function here (``corral.platform`` does it)."""
    _installed[:] = [effects]


def _effects(effects: ApprovalEffects | None) -> ApprovalEffects:
    if effects is not None:
        return effects
    if not _installed:
        raise RuntimeError(
            "No approval effects installed: pass effects=corral.runtime.APPROVAL_EFFECTS or "
            "import corral.platform, which installs them."
        )
    return _installed[0]


@dataclass(frozen=True)
class ApprovalVote:
    """One principal's vote on a request."""

    principal: str
    role: str
    """The approver role the vote was cast with."""
    vote: Vote
    comment: str
    """The approver's comment, or the rejection's reason."""
    created_at: datetime
    accountable: str = ""
    """The human the vote counts as (``user:alice``); a user's own principal."""


@dataclass(frozen=True)
class Approval:
    """An approval request as shown to approvers, with its votes.

    Attributes:
        id: ``apr_...``.
        tenant_id: The tenant it belongs to.
        kind: ``tool_call`` or ``promotion``.
        status: ``pending``, ``approved``, ``rejected`` or ``expired``.
        action: The governed action (``tool.call``, ``agent.promote``).
        subject: ``tool:<name>`` or ``agent:<name>@<version>-><stage>``.
        run_id: The paused run (tool calls).
        run_status: That run's status now.
        step_index: The run's step holding the call.
        call_index: The call's index within the step.
        idempotency_key: ``{run_id}:{step}:{call}`` of the call; for a call from outside a
            run (``run_id`` ``None``), ``direct:{call_id}`` of the call that spent the approval,
            ``None`` while unspent.
        arguments: The call's arguments, secret-looking values redacted.
        arguments_digest: ``sha256:<hex>`` of the canonical arguments: the approval covers only
            a call with exactly these arguments.
        reason: Why policy asks for approval (the policies' reasons).
        approver_roles: Roles whose holders may vote (any one of them).
        required_approvals: Distinct approving accountable humans needed.
        received_approvals: Distinct accountable humans who approved so far.
        policy_ids: The approval policies an approval lifts.
        policy_decision_id: The stored decision that asked for approval.
        requested_by: Who requested the run or promotion (neither they nor their accountable
            humans may approve it).
        created_at: When it was requested.
        expires_at: When it expires if still pending.
        decided_at: When it was approved, rejected or expired.
        votes: Votes, oldest first.
    """

    id: str
    tenant_id: str
    kind: str
    status: ApprovalStatus
    action: str
    subject: str
    run_id: str | None
    run_status: str | None
    step_index: int | None
    call_index: int | None
    idempotency_key: str | None
    arguments: dict[str, Any]
    arguments_digest: str
    reason: str
    approver_roles: list[str]
    required_approvals: int
    received_approvals: int
    policy_ids: list[str]
    policy_decision_id: str
    requested_by: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    votes: list[ApprovalVote]

    @property
    def tool(self) -> str | None:
        """The tool's name for a tool-call request, else ``None``."""
        prefix, _, name = self.subject.partition(":")
        return name if self.kind == "tool_call" and prefix == "tool" else None


# --- reads ----------------------------------------------------------------------------------------


def _not_found(approval_id: str) -> NotFound:
    return NotFound(
        f"Approval request {approval_id!r} not found; list them with `corral approvals`.",
        kind="approval",
        name=approval_id,
    )


def _votes_of(connection: Connection, ids: list[str]) -> dict[str, list[ApprovalVote]]:
    votes: dict[str, list[ApprovalVote]] = {approval_id: [] for approval_id in ids}
    if ids:
        for vote in connection.execute(
            select(_VOTES)
            .where(_VOTES.c.approval_id.in_(ids))
            .order_by(_VOTES.c.created_at, _VOTES.c.id)
        ):
            votes[vote.approval_id].append(
                ApprovalVote(
                    vote.principal,
                    vote.role,
                    vote.vote,
                    vote.comment,
                    vote.created_at,
                    vote.accountable,
                )
            )
    return votes


def _approvals(connection: Connection, rows: list[Any], effects: ApprovalEffects) -> list[Approval]:
    """Read models of approval rows, with their votes and their runs' statuses."""
    votes = _votes_of(connection, [row.id for row in rows])
    run_ids = {row.run_id for row in rows if row.run_id}
    statuses = effects.run_statuses(connection, run_ids) if run_ids else {}
    return [
        Approval(
            id=row.id,
            tenant_id=row.tenant_id,
            kind=row.kind,
            status=row.status,
            action=row.action,
            subject=row.subject,
            run_id=row.run_id,
            run_status=statuses.get(row.run_id) if row.run_id else None,
            step_index=row.step_index,
            call_index=row.call_index,
            idempotency_key=row.idempotency_key,
            arguments=dict(row.arguments_redacted or {}),
            arguments_digest=row.arguments_digest,
            reason=row.reason,
            approver_roles=list(row.approver_roles),
            required_approvals=row.required_approvals,
            received_approvals=len({v.accountable for v in votes[row.id] if v.vote == "approve"}),
            policy_ids=list(row.policy_ids),
            policy_decision_id=row.policy_decision_id,
            requested_by=row.requested_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_at=row.decided_at,
            votes=votes[row.id],
        )
        for row in rows
    ]


def _row(connection: Connection, approval_id: str, tenant_id: str, *, lock: bool = False) -> Any:
    query = select(_APPROVALS).where(
        _APPROVALS.c.id == approval_id, _APPROVALS.c.tenant_id == tenant_id
    )
    # Votes on one request are serialised on its row (SQLite: BEGIN IMMEDIATE already does it),
    # so that two approvers voting at once both count.
    row = connection.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise _not_found(approval_id)
    return row


def _list(
    connection: Connection,
    tenant_id: str,
    status: str | None,
    run_id: str | None,
    limit: int,
    after: str | None,
    effects: ApprovalEffects,
) -> list[Approval]:
    query = select(_APPROVALS).where(_APPROVALS.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(_APPROVALS.c.status == status)
    if run_id is not None:
        query = query.where(_APPROVALS.c.run_id == run_id)
    if after is not None:
        cursor = _row(connection, after, tenant_id)
        query = query.where(
            (_APPROVALS.c.created_at > cursor.created_at)
            | ((_APPROVALS.c.created_at == cursor.created_at) & (_APPROVALS.c.id > cursor.id))
        )
    rows = connection.execute(
        query.order_by(_APPROVALS.c.created_at, _APPROVALS.c.id).limit(limit)
    ).all()
    return _approvals(connection, list(rows), effects)


async def list_approvals(
    store: Store,
    *,
    tenant_id: str,
    status: ApprovalStatus | None = None,
    run_id: str | None = None,
    limit: int = 50,
    after: str | None = None,
    effects: ApprovalEffects | None = None,
) -> list[Approval]:
    """Approval requests of the tenant, oldest first.

    Args:
        store: The store.
        tenant_id: The caller's tenant.
        status: Only requests in this status; ``None``: all.
        run_id: Only requests of this run.
        limit: At most this many (1..500).
        after: Cursor: the id of the last request of the previous page.
        effects: Reads the requests' runs; ``None``: the installed ones.

    Returns:
        The requests, each with its votes.

    Raises:
        InvalidRequest: an unknown status or a limit out of range.
        NotFound: ``after`` names no request of the tenant.
    """
    if status is not None and status not in APPROVAL_STATUSES:
        raise InvalidRequest(
            f"Unknown approval status {status!r}; use one of {', '.join(APPROVAL_STATUSES)}."
        )
    if not 1 <= limit <= 500:
        raise InvalidRequest(f"limit must be 1 to 500, not {limit}.")
    chosen = _effects(effects)
    async with store.read(tenant_id) as session:
        return await session.run_sync(
            lambda sync: _list(sync.connection(), tenant_id, status, run_id, limit, after, chosen)
        )


async def get_approval(
    store: Store, approval_id: str, *, tenant_id: str, effects: ApprovalEffects | None = None
) -> Approval:
    """One approval request with its votes.

    Args:
        store: The store.
        approval_id: The request (``apr_...``).
        tenant_id: The caller's tenant.
        effects: Reads the request's run; ``None``: the installed ones.

    Raises:
        NotFound: no such request in this tenant.
    """
    chosen = _effects(effects)
    async with store.read(tenant_id) as session:
        return await session.run_sync(
            lambda sync: _approvals(
                sync.connection(), [_row(sync.connection(), approval_id, tenant_id)], chosen
            )[0]
        )


# --- effects of a decision ------------------------------------------------------------------------


def _end_request(
    connection: Connection,
    approval: Any,
    effects: ApprovalEffects,
    *,
    status: Literal["rejected", "expired"],
    error: str,
    actor: str,
    now: datetime,
) -> None:
    """Set a rejected or expired request's status and end what waited on it."""
    connection.execute(
        _APPROVALS.update()
        .where(_APPROVALS.c.id == approval.id)
        .values(status=status, decided_at=now)
    )
    effects.ended(connection, approval, status=status, error=error, actor=actor, now=now)


def _approve(
    connection: Connection,
    approval: Any,
    approvers: list[str],
    actor: str,
    effects: ApprovalEffects,
) -> None:
    """The request has its approvals: mark it and let the run or promotion go on."""
    now = utcnow()
    connection.execute(
        _APPROVALS.update()
        .where(_APPROVALS.c.id == approval.id)
        .values(status="approved", decided_at=now)
    )
    _audit(connection, approval, actor, "approval.approved", "approved", approvers=approvers)
    effects.approved(connection, approval, approvers, actor, now)


def _audit(
    connection: Connection, approval: Any, actor: str, action: str, outcome: str, **details: Any
) -> None:
    append_events(
        connection,
        approval.tenant_id,
        [
            AuditRecord(
                actor,
                action,
                f"approval:{approval.id}",
                outcome,
                run_id=approval.run_id,
                policy_decision_id=approval.policy_decision_id,
                details={"kind": approval.kind, "subject": approval.subject, **details},
            )
        ],
    )


def _expire(connection: Connection, approval: Any, now: datetime, effects: ApprovalEffects) -> None:
    error = (
        f"approval request {approval.id} expired at {approval.expires_at.isoformat()} "
        "without a decision"
    )
    _audit(
        connection,
        approval,
        "system",
        "approval.expired",
        "expired",
        expires_at=approval.expires_at.isoformat(),
    )
    _end_request(
        connection, approval, effects, status="expired", error=error, actor="system", now=now
    )


# --- votes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Voter:
    """Who votes: the principal, the human it counts as, its roles, and who it may not approve."""

    principal: str
    accountable: str
    roles: list[str]
    requesters: frozenset[str]
    """The request's requester and its accountable humans."""
    service_decision: dict[str, Any] | None = None
    """The stored ``approval.decide`` decision that let a service account vote."""


def _check_voter(approval: Any, voter: _Voter, vote: Vote) -> str:
    """The approver role the principal votes with; refuses those who may not vote."""
    principal = voter.principal
    held: list[str] = [role for role in approval.approver_roles if role in voter.roles]
    if not held:
        wanted = " or ".join(repr(r) for r in approval.approver_roles) or "an approver role"
        raise PolicyDenied(
            f"{principal} may not decide approval request {approval.id!r}: it needs role "
            f"{wanted}, and {principal} holds {', '.join(sorted(voter.roles)) or 'no role'}. "
            "Ask a holder of that role; a tenant admin grants roles with `corral roles grant`.",
            code="approval_role_missing",
        )
    overlap = {principal, voter.accountable} & voter.requesters
    if vote == "approve" and overlap:
        acting = f" (acting for {voter.accountable})" if voter.accountable != principal else ""
        raise PolicyDenied(
            f"{principal}{acting} may not approve their own request {approval.id!r} "
            f"({approval.subject}, {approval.run_id or approval.id}, requested by "
            f"{approval.requested_by}): a key counts as its accountable human, and "
            f"{' and '.join(sorted(overlap))} is accountable for the request. Another person "
            f"holding {' or '.join(repr(r) for r in approval.approver_roles)} must approve it.",
            code="approval_self_approval",
        )
    return held[0]


def _decide(
    connection: Connection,
    approval_id: str,
    tenant_id: str,
    voter: _Voter,
    vote: Vote,
    comment: str,
    effects: ApprovalEffects,
) -> tuple[Approval, bool]:
    """Record a vote; returns the request after it and whether it had expired instead."""
    approval, now = _row(connection, approval_id, tenant_id, lock=True), utcnow()
    if approval.status != "pending":
        raise Conflict(
            f"Approval request {approval_id!r} is already {approval.status}"
            + (f" (at {approval.decided_at.isoformat()})" if approval.decided_at else "")
            + "; it can no longer be voted on."
        )
    if approval.expires_at <= now:
        _expire(connection, approval, now, effects)
        return _approvals(connection, [_row(connection, approval_id, tenant_id)], effects)[0], True
    role = _check_voter(approval, voter, vote)
    voted = connection.execute(
        select(_VOTES.c.principal, _VOTES.c.accountable, _VOTES.c.vote).where(
            _VOTES.c.approval_id == approval_id,
            (_VOTES.c.principal == voter.principal) | (_VOTES.c.accountable == voter.accountable),
        )
    ).first()
    if voted is not None:
        raise Conflict(
            f"{voter.accountable} already voted {voted.vote!r} on approval request "
            f"{approval_id!r} (as {voted.principal}); one vote per person, however many keys "
            "they hold.",
            code="approval_already_voted",
        )
    if voter.service_decision is not None:
        insert_decisions(connection, [voter.service_decision])
    _insert_vote(connection, approval, voter, role, vote, comment, now)
    if vote == "reject":
        _reject(connection, approval, voter, comment, now, effects)
    else:
        _count_approval(connection, approval, voter, role, comment, effects)
    return _approvals(connection, [_row(connection, approval_id, tenant_id)], effects)[0], False


def _insert_vote(
    connection: Connection,
    approval: Any,
    voter: _Voter,
    role: str,
    vote: Vote,
    comment: str,
    now: datetime,
) -> None:
    connection.execute(
        _VOTES.insert(),
        [
            {
                "id": new_id("vote"),
                "tenant_id": approval.tenant_id,
                "approval_id": approval.id,
                "principal": voter.principal,
                "accountable": voter.accountable,
                "role": role,
                "vote": vote,
                "comment": comment,
                "created_at": now,
            }
        ],
    )


def _vote_details(voter: _Voter) -> dict[str, Any]:
    details: dict[str, Any] = {"accountable": voter.accountable}
    if voter.service_decision is not None:
        details["service_vote_decision_id"] = voter.service_decision["id"]
    return details


def _count_approval(
    connection: Connection,
    approval: Any,
    voter: _Voter,
    role: str,
    comment: str,
    effects: ApprovalEffects,
) -> None:
    approvers = _approvers(connection, approval.id)
    _audit(
        connection,
        approval,
        voter.principal,
        "approval.vote",
        "approve",
        role=role,
        comment=comment,
        received=len(approvers),
        required=approval.required_approvals,
        **_vote_details(voter),
    )
    if len(approvers) >= approval.required_approvals:
        _approve(connection, approval, approvers, voter.principal, effects)


def _approvers(connection: Connection, approval_id: str) -> list[str]:
    """The distinct accountable humans who approved, in the order they first did."""
    humans = connection.execute(
        select(_VOTES.c.accountable)
        .where(_VOTES.c.approval_id == approval_id, _VOTES.c.vote == "approve")
        .order_by(_VOTES.c.created_at, _VOTES.c.id)
    ).scalars()
    return list(dict.fromkeys(humans))


def _reject(
    connection: Connection,
    approval: Any,
    voter: _Voter,
    reason: str,
    now: datetime,
    effects: ApprovalEffects,
) -> None:
    principal = voter.principal
    _audit(
        connection,
        approval,
        principal,
        "approval.vote",
        "reject",
        comment=reason,
        **_vote_details(voter),
    )
    _audit(connection, approval, principal, "approval.rejected", "rejected", reason=reason)
    error = f"approval request {approval.id} rejected by {principal}: {reason}"
    _end_request(
        connection, approval, effects, status="rejected", error=error, actor=principal, now=now
    )


async def decide_approval(
    store: Store,
    approval_id: str,
    *,
    tenant_id: str,
    principal: str,
    roles: list[str],
    vote: Vote,
    comment: str = "",
    reason: str = "",
    accountable: str | None = None,
    governance: Governance | None = None,
    effects: ApprovalEffects | None = None,
) -> Approval:
    """Vote on a pending approval request, in one transaction with its effects and audit.

    An approval that brings the distinct approving accountable humans to
    ``required_approvals`` approves the request: a tool call's run is queued again (the caller
    should wake a worker) and runs exactly the approved call; a promotion completes. A
    rejection rejects the request at once: the run ends ``REJECTED`` (``approval_rejected``) or
    the promotion is rejected.

    Args:
        store: The store.
        approval_id: The request (``apr_...``).
        tenant_id: The voter's tenant.
        principal: Who votes (``user:alice``, ``service:release-bot``).
        roles: The roles ``principal`` holds; one must be among the request's approver roles.
        vote: ``approve`` or ``reject``.
        comment: The approver's comment (approve), kept with the vote and in the audit log.
        reason: Why it is rejected (reject; required).
        accountable: The human ``principal`` acts for (:attr:`Principal.accountable
            <corral.tenancy.Principal.accountable>`); ``None``: ``principal`` itself.
        governance: Decides ``approval.decide`` for a service account's vote; ``None``:
            service accounts may not vote.
        effects: What the decision does to the run or promotion; ``None``: the installed ones
            (:func:`install_approval_effects`).

    Returns:
        The request after the vote.

    Raises:
        NotFound: no such request in this tenant.
        PolicyDenied: the principal holds none of the approver roles; approves a request they
            or their accountable human made (``approval_self_approval``); is a service account
            no policy lets vote, or an agent (``approval_service_vote``).
        Conflict: the request was already decided or had expired (it is expired now and its run
            ended ``REJECTED``), the principal or its accountable human already voted, or the
            run no longer waits for it.
        InvalidRequest: an unknown vote, or a rejection without a reason.
    """
    if vote not in ("approve", "reject"):
        raise InvalidRequest(f"Unknown vote {vote!r}; use approve or reject.")
    if vote == "reject" and not reason.strip():
        raise InvalidRequest(
            f"Rejecting approval request {approval_id!r} needs a reason (--reason TEXT); "
            "it is kept in the audit log and shown as the run's error."
        )
    chosen = _effects(effects)
    request = await get_approval(store, approval_id, tenant_id=tenant_id, effects=chosen)
    voter = _Voter(
        principal,
        accountable or principal,
        list(roles),
        await accountable_humans(store, tenant_id, request.requested_by),
    )
    # A decided request is refused as such in the transaction (statuses never return to
    # pending), so only a vote that may count needs the service-vote decision.
    if principal_ref(principal).type != "User" and request.status == "pending":
        voter = await _service_voter(store, governance, request, voter, chosen)
    approval, expired = await store.run_sync(
        functools.partial(
            _decide,
            approval_id=approval_id,
            tenant_id=tenant_id,
            voter=voter,
            vote=vote,
            comment=reason.strip() if vote == "reject" else comment,
            effects=chosen,
        ),
        tenant_id,
    )
    _observe_decided(approval)
    if expired:  # committed: the request is expired and its run ended
        raise Conflict(
            f"Approval request {approval_id!r} expired at {approval.expires_at.isoformat()} "
            "before it was decided; "
            + (
                f"its run {approval.run_id} ended REJECTED (approval_expired)."
                if approval.run_id
                else "it can no longer be voted on."
            )
        )
    return approval


def _observe_decided(approval: Approval) -> None:
    """Metrics of a committed vote: the request's wait, the run it ended ``REJECTED``."""
    if approval.status == "pending" or approval.decided_at is None:
        return
    waited = approval.decided_at - approval.created_at
    observe_approval_wait(approval.status, waited.total_seconds())
    if approval.status in ("rejected", "expired") and approval.run_id is not None:
        count_run_finished("REJECTED", f"approval_{approval.status}")


async def _service_voter(
    store: Store,
    governance: Governance | None,
    approval: Approval,
    voter: _Voter,
    effects: ApprovalEffects,
) -> _Voter:
    """The voter with its ``approval.decide`` decision, if policy lets this service vote."""
    ref = principal_ref(voter.principal)
    if ref.type != "ServiceAccount":
        raise PolicyDenied(
            f"{voter.principal} is an agent identity; agents never decide approvals.",
            code="approval_service_vote",
        )
    kind, _, name = approval.subject.partition(":")
    resource = EntityRef("Tool" if kind == "tool" else "Agent", name.split("@")[0])
    request = PolicyRequest(
        principal=ref,
        action="approval.decide",
        resource=resource,
        context=PolicyContext(
            tenant=approval.tenant_id,
            stage=await _stage_of(store, approval, effects),
            requester=approval.requested_by,
        ),
    )
    decision = None
    if governance is not None:
        entity = governance.principal_entity(voter.principal, approval.tenant_id, roles=voter.roles)
        decision = await governance.decide(approval.tenant_id, request, [entity])
    if decision is None or decision.decision != "allow":
        because = "; ".join(r.rstrip(".") for r in decision.reasons) if decision else ""
        raise PolicyDenied(
            f"{voter.principal} is a service account and may vote on approval request "
            f"{approval.id!r} only where a policy permits action `approval.decide` for it "
            f"({because or 'no policy permits it'}); approvals are for people: approve with a "
            "personal key (`corral keys create --user NAME`) or an OIDC login, or add a "
            'Policy: permit (principal == ServiceAccount::"' + voter.principal + '", '
            'action == Action::"approval.decide", resource);',
            code="approval_service_vote",
        )
    row = decision_row(decision, request, tenant_id=approval.tenant_id, run_id=approval.run_id)
    return dataclasses.replace(voter, service_decision=row)


async def _stage_of(store: Store, approval: Approval, effects: ApprovalEffects) -> str:
    """The stage a request acts in: a promotion's target, or its run's stage."""
    if approval.kind == "promotion":
        return approval.subject.rpartition("->")[2]
    run_id = approval.run_id
    if run_id is None:
        return ""
    async with store.read(approval.tenant_id) as session:
        return await session.run_sync(lambda sync: effects.run_stage(sync.connection(), run_id))


# --- expiry ---------------------------------------------------------------------------------------


def _overdue(now: datetime) -> Any:
    return _APPROVALS.c.status == "pending", _APPROVALS.c.expires_at <= now


def _expire_overdue(
    connection: Connection, now: datetime, effects: ApprovalEffects
) -> list[tuple[datetime, bool]]:
    query = (
        select(_APPROVALS)
        .where(*_overdue(now))
        .order_by(_APPROVALS.c.expires_at)
        .limit(_EXPIRE_BATCH)
    )
    # Workers sweep concurrently: each takes the requests no other sweep or vote holds.
    rows = connection.execute(skip_locked(query, connection.dialect.name)).all()
    for row in rows:
        _expire(connection, row, now, effects)
    return [(row.created_at, row.run_id is not None) for row in rows]


async def expire_approvals(
    store: Store, *, now: datetime, effects: ApprovalEffects | None = None
) -> int:
    """Expire every pending request whose ``expires_at`` is not after ``now`` (all tenants).

    Each becomes ``expired``; a run waiting for it ends ``REJECTED`` (``approval_expired``), a
    promotion waiting for it is rejected; ``approval.expired`` is audited. Workers call it from
    their heartbeat; an idle store costs one read and no write lock.

    Args:
        store: The store.
        now: Requests whose ``expires_at`` is not after this expire.
        effects: What expiry does to runs and promotions; ``None``: the installed ones.

    Returns:
        How many requests expired (at most 100 per call; the next call takes the rest).
    """
    async with store.read(SYSTEM) as session:
        overdue = (
            await session.execute(select(_APPROVALS.c.id).where(*_overdue(now)).limit(1))
        ).first()
    if overdue is None:
        return 0
    chosen = _effects(effects)
    expired = await store.run_sync(
        functools.partial(_expire_overdue, now=now, effects=chosen), SYSTEM
    )
    for created_at, has_run in expired:
        observe_approval_wait("expired", (now - created_at).total_seconds())
        if has_run:
            count_run_finished("REJECTED", "approval_expired")
    return len(expired)
