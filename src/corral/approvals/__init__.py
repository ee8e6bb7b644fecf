"""Approvals: people deciding governed actions that policy says need them."""

# First: the runtime and the gateway import it while the service (which imports them) loads.
from corral.approvals._requests import ApprovalKind, ApprovalRequest, approval_request
from corral.approvals._runs import approved_calls, withdraw_run_approvals
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
from corral.approvals._tables import ApprovalRow

__all__ = [
    "APPROVAL_STATUSES",
    "Approval",
    "ApprovalEffects",
    "ApprovalKind",
    "ApprovalRequest",
    "ApprovalRow",
    "ApprovalStatus",
    "ApprovalVote",
    "Vote",
    "approval_request",
    "approved_calls",
    "decide_approval",
    "expire_approvals",
    "get_approval",
    "install_approval_effects",
    "list_approvals",
    "withdraw_run_approvals",
]
