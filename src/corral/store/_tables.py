"""Imports every domain's tables so that ``Base.metadata`` is complete (for Alembic and tests)."""

from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.observability._tables import SpanRow
from corral.registry._tables import AgentRow, AgentVersionRow, ToolRow, ToolVersionRow
from corral.runtime._tables import KillSwitchRow, RunEventRow, RunRow, StepRow, ToolCallRow
from corral.tenancy._tables import TenantRow

__all__ = [
    "AgentRow",
    "AgentVersionRow",
    "AuditEventRow",
    "AuditHeadRow",
    "KillSwitchRow",
    "RunEventRow",
    "RunRow",
    "SpanRow",
    "StepRow",
    "TenantRow",
    "ToolCallRow",
    "ToolRow",
    "ToolVersionRow",
]
