"""Imports every domain's tables so that ``Base.metadata`` is complete (for Alembic and tests)."""

from corral.approvals._tables import ApprovalRow, ApprovalVoteRow
from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.cache._tables import ModelResponseCacheRow, ToolResultCacheRow
from corral.costs._tables import BudgetReservationRow, ModelCallRow
from corral.evals._tables import (
    EvalCaseResultRow,
    EvalGraderResultRow,
    EvalRunRow,
    EvalSuiteRow,
    EvalSuiteVersionRow,
)
from corral.observability._tables import SpanRow
from corral.policy._tables import PolicyDecisionRow, PolicyRow, PolicyVersionRow
from corral.registry._tables import (
    AgentRow,
    AgentVersionRow,
    McpServerRow,
    McpServerVersionRow,
    McpToolPinRow,
    ModelRow,
    ModelVersionRow,
    PromotionRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)
from corral.runtime._tables import KillSwitchRow, RunEventRow, RunRow, StepRow, ToolCallRow
from corral.secrets._tables import SecretRow
from corral.tenancy._tables import ApiKeyRow, LocalUserRow, QuotaRow, RoleGrantRow, TenantRow

__all__ = [
    "AgentRow",
    "AgentVersionRow",
    "ApiKeyRow",
    "ApprovalRow",
    "ApprovalVoteRow",
    "AuditEventRow",
    "AuditHeadRow",
    "BudgetReservationRow",
    "EvalCaseResultRow",
    "EvalGraderResultRow",
    "EvalRunRow",
    "EvalSuiteRow",
    "EvalSuiteVersionRow",
    "KillSwitchRow",
    "LocalUserRow",
    "McpServerRow",
    "McpServerVersionRow",
    "McpToolPinRow",
    "ModelCallRow",
    "ModelResponseCacheRow",
    "ModelRow",
    "ModelVersionRow",
    "PolicyDecisionRow",
    "PolicyRow",
    "PolicyVersionRow",
    "PromotionRow",
    "QuotaRow",
    "RoleGrantRow",
    "RunEventRow",
    "RunRow",
    "SecretRow",
    "SpanRow",
    "StageBindingRow",
    "StepRow",
    "TenantRow",
    "ToolCallRow",
    "ToolResultCacheRow",
    "ToolRow",
    "ToolVersionRow",
]
