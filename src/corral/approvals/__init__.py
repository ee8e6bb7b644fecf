"""Approvals: people deciding governed actions that policy says need them."""

# First: the runtime and the gateway import it while the service (which imports them) loads.
from corral.approvals._requests import ApprovalKind, ApprovalRequest, approval_request
from corral.approvals._service import (
    APPROVAL_STATUSES,
    Approval,
    ApprovalStatus,
    ApprovalVote,
    Vote,
    decide_approval,
    expire_approvals,
    get_approval,
    list_approvals,
)

__all__ = [
    "APPROVAL_STATUSES",
    "Approval",
    "ApprovalKind",
    "ApprovalRequest",
    "ApprovalStatus",
    "ApprovalVote",
    "Vote",
    "approval_request",
    "decide_approval",
    "expire_approvals",
    "get_approval",
    "list_approvals",
]
