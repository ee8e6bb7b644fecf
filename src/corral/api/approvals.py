"""Routes: ``/v1/approvals``: list approval requests and vote on them.

A voter's roles are the caller's roles in the tenant (API key roles, OIDC role grants); a vote
counts as the caller's accountable human. Every vote is one transaction, audited by the
approvals service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import ApprovalApprove, ApprovalOut, ApprovalReject, Page
from corral.approvals import Approval, Vote, decide_approval, get_approval, list_approvals
from corral.platform import Platform

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["approvals"])


def _out(approval: Approval) -> ApprovalOut:
    return ApprovalOut.model_validate(approval)  # attributes, including the `tool` property


@router.get("/approvals", response_model=Page[ApprovalOut])
async def get_approvals(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("approvals.read")],
    status: Annotated[
        Literal["pending", "approved", "rejected", "expired", "withdrawn"] | None,
        Query(description="Only requests in this status; default: all."),
    ] = None,
    run_id: Annotated[str | None, Query(description="Only requests of this run.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[ApprovalOut]:
    """Approval requests of the caller's tenant, oldest first, one page at a time."""
    approvals = await list_approvals(
        platform.store,
        tenant_id=caller.tenant_id,
        status=status,
        run_id=run_id,
        limit=limit,
        after=after,
    )
    items = [_out(a) for a in approvals]
    return Page(items=items, next=items[-1].id if len(items) == limit else None)


@router.get("/approvals/{approval_id}", response_model=ApprovalOut)
async def get_one_approval(
    approval_id: str, platform: PlatformDep, caller: Annotated[Caller, requires("approvals.read")]
) -> ApprovalOut:
    """One approval request with its votes. 404 if the tenant has no such request."""
    return _out(await get_approval(platform.store, approval_id, tenant_id=caller.tenant_id))


async def _vote(
    platform: Platform, approval_id: str, caller: Caller, vote: Vote, text: str
) -> ApprovalOut:
    approval = await decide_approval(
        platform.store,
        approval_id,
        tenant_id=caller.tenant_id,
        principal=caller.principal,
        roles=sorted(caller.roles),
        accountable=caller.accountable,
        governance=platform.governance,
        vote=vote,
        comment=text if vote == "approve" else "",
        reason=text if vote == "reject" else "",
    )
    if approval.run_status == "QUEUED":
        platform.worker.wake()  # a run this process can drive continues now
    return _out(approval)


@router.post("/approvals/{approval_id}/approve", response_model=ApprovalOut)
async def post_approve(
    approval_id: str,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("approvals.decide")],
    body: ApprovalApprove | None = None,
) -> ApprovalOut:
    """Approve a pending request as the caller.

    Once ``required_approvals`` distinct accountable humans approved, the request is
    ``approved``: its run is queued again and executes exactly the approved call (a promotion
    completes). 403 if the caller holds none of ``approver_roles``, acts for the requester's
    accountable human, or is a service account no policy lets vote; 409 if the request was
    decided or expired, or the caller or its accountable human already voted; 404 for an
    unknown id.
    """
    comment = body.comment if body is not None else ""
    return await _vote(platform, approval_id, caller, "approve", comment)


@router.post("/approvals/{approval_id}/reject", response_model=ApprovalOut)
async def post_reject(
    approval_id: str,
    body: ApprovalReject,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("approvals.decide")],
) -> ApprovalOut:
    """Reject a pending request as the caller: its run ends ``REJECTED`` (``approval_rejected``).

    403 if the caller holds none of ``approver_roles``; 409 if the request was decided or
    expired, or the caller already voted; 400 for a blank reason; 404 for an unknown id.
    """
    return await _vote(platform, approval_id, caller, "reject", body.reason)
