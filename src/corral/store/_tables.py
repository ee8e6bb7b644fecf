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
from corral.feedback._tables import FeedbackRow
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
    PromptRow,
    PromptVersionRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
    TrafficAssignmentRow,
    TrafficSplitRow,
)
from corral.releases._tables import ExperimentRow, ReleaseDecisionRow, RolloutRow
from corral.replay._tables import ReplayRow
from corral.runtime._tables import KillSwitchRow, RunEventRow, RunRow, StepRow, ToolCallRow
from corral.secrets._tables import SecretRow
from corral.slo._tables import SloEvaluatorRow, SloStateRow
from corral.tenancy._tables import (
    ApiKeyRow,
    LocalUserRow,
    QuotaRow,
    RoleGrantRow,
    SessionCutoffRow,
    SessionRevocationRow,
    TenantRow,
)

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
    "ExperimentRow",
    "FeedbackRow",
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
    "PromptRow",
    "PromptVersionRow",
    "QuotaRow",
    "ReleaseDecisionRow",
    "ReplayRow",
    "RoleGrantRow",
    "RolloutRow",
    "RunEventRow",
    "RunRow",
    "SecretRow",
    "SessionCutoffRow",
    "SessionRevocationRow",
    "SloEvaluatorRow",
    "SloStateRow",
    "SpanRow",
    "StageBindingRow",
    "StepRow",
    "TenantRow",
    "ToolCallRow",
    "ToolResultCacheRow",
    "ToolRow",
    "ToolVersionRow",
    "TrafficAssignmentRow",
    "TrafficSplitRow",
]
