"""overview_indexes: covering indexes for the portal overview's aggregates (issue 13).

The overview counts a tenant's runs per day and status, takes latency percentiles over them,
counts the runs running now, tool calls per tool and cost per day and agent. Each of those
reads only index entries now instead of a table row per run or call:

- ``runs (tenant_id, created_at, status, finished_at)`` replaces ``(tenant_id, created_at)``
  (the same leading columns, so the run list and the SLO evaluator use it as before);
- ``runs (tenant_id, status)`` counts the running runs;
- ``tool_calls (tenant_id, started_at, tool_name)`` is new (tool calls had no time index);
- ``model_calls (tenant_id, created_at, agent, cost_usd)`` replaces ``(tenant_id, created_at)``.

Replacing rather than adding keeps the number of indexes a run's and a model call's insert
updates: one more for ``runs`` (the status count), one more for ``tool_calls``.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_runs_tenant_created_status",
        "runs",
        ["tenant_id", "created_at", "status", "finished_at"],
    )
    op.drop_index("ix_runs_tenant_created", table_name="runs")
    op.create_index("ix_runs_tenant_status", "runs", ["tenant_id", "status"])
    op.create_index(
        "ix_tool_calls_tenant_started", "tool_calls", ["tenant_id", "started_at", "tool_name"]
    )
    op.create_index(
        "ix_model_calls_tenant_day_cost",
        "model_calls",
        ["tenant_id", "created_at", "agent", "cost_usd"],
    )
    op.drop_index("ix_model_calls_tenant_day", table_name="model_calls")


def downgrade() -> None:
    op.create_index("ix_model_calls_tenant_day", "model_calls", ["tenant_id", "created_at"])
    op.drop_index("ix_model_calls_tenant_day_cost", table_name="model_calls")
    op.drop_index("ix_tool_calls_tenant_started", table_name="tool_calls")
    op.drop_index("ix_runs_tenant_status", table_name="runs")
    op.create_index("ix_runs_tenant_created", "runs", ["tenant_id", "created_at"])
    op.drop_index("ix_runs_tenant_created_status", table_name="runs")
