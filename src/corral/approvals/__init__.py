"""Approvals: people deciding governed actions that policy says need them."""

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
    "ApprovalStatus",
    "ApprovalVote",
    "Vote",
    "decide_approval",
    "expire_approvals",
    "get_approval",
    "list_approvals",
]
