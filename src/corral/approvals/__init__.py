"""Approvals: people deciding governed actions that policy says need them."""

from corral.approvals._service import (
    APPROVAL_STATUSES,
    Approval,
    ApprovalEffects,
    ApprovalStatus,
    ApprovalVote,
    Vote,
    decide_approval,
    expire_approvals,
    get_approval,
    install_approval_effects,
    list_approvals,
)

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
