"""The approvals queue: what each request would allow, who asked, why, N-of-M; approve or reject."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from corral.approvals import APPROVAL_STATUSES, Vote, decide_approval, list_approvals
from corral.portal._routes import router
from corral.portal._web import (
    PORTAL_PATH,
    form_of,
    platform_of,
    redirect,
    render,
    require,
    session_of,
)

__all__ = ["approvals", "approve", "reject"]


@router.get("/approvals")
async def approvals(request: Request) -> Response:
    """Approval requests, pending first by default (permission ``approvals.read``)."""
    session = await session_of(request)
    require(session, "approvals.read")
    status = request.query_params.get("status", "pending")
    chosen = next((known for known in APPROVAL_STATUSES if known == status), None)
    requests = await list_approvals(
        platform_of(request).store,
        tenant_id=session.principal.tenant_id,
        status=chosen,
        limit=200,
    )
    context = {
        "title": "Approvals",
        "requests": requests,
        "status": chosen or "",
        "statuses": APPROVAL_STATUSES,
        "can_decide": session.principal.can("approvals.decide"),
    }
    return render(request, "approvals.html", context)


async def _vote(request: Request, approval_id: str, vote: Vote) -> Response:
    """Vote as ``POST /v1/approvals/{id}/approve|reject`` does (``approvals.decide``)."""
    session = await session_of(request)
    require(session, "approvals.decide")
    text = (await form_of(request)).get("comment", "").strip()
    platform = platform_of(request)
    principal = session.principal
    approval = await decide_approval(
        platform.store,
        approval_id,
        tenant_id=principal.tenant_id,
        principal=principal.principal,
        roles=sorted(principal.roles),
        accountable=principal.accountable,
        governance=platform.governance,
        vote=vote,
        comment=text if vote == "approve" else "",
        reason=text if vote == "reject" else "",
    )
    if approval.run_status == "QUEUED":
        platform.worker.wake()
    if approval.run_id:
        return redirect(request, f"{PORTAL_PATH}/runs/{approval.run_id}")
    return redirect(request, f"{PORTAL_PATH}/approvals")


@router.post("/approvals/{approval_id}/approve")
async def approve(request: Request, approval_id: str) -> Response:
    """Approve with an optional comment."""
    return await _vote(request, approval_id, "approve")


@router.post("/approvals/{approval_id}/reject")
async def reject(request: Request, approval_id: str) -> Response:
    """Reject with a reason (required by the approvals service)."""
    return await _vote(request, approval_id, "reject")
