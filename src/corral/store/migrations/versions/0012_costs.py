"""costs: the model-call ledger, budget reservations and the run's cost total (issue 12).

``model_calls`` holds one row per model call (tokens, deployment, exact cost);
``budget_reservations`` the pessimistic cost of calls in flight, counted against the daily
budgets; ``runs.cost_usd`` the run's total. Dollar amounts are whole picodollars in ``BIGINT``
columns (:class:`corral.store.USDAmount`): exact, and summed exactly on both databases. Both new
tables are tenant-owned: row-level security covers them on PostgreSQL.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from corral.store._rls import enable_row_level_security

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_calls",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("agent", sa.String(63), nullable=True),
        sa.Column("agent_version", sa.String(32), nullable=True),
        sa.Column("principal", sa.String(200), nullable=True),
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.BigInteger(), nullable=True),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("usage_missing", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_calls")),
    )
    op.create_index(op.f("ix_model_calls_run_id"), "model_calls", ["run_id"])
    op.create_index(op.f("ix_model_calls_tenant_id"), "model_calls", ["tenant_id"])
    op.create_index("ix_model_calls_tenant_day", "model_calls", ["tenant_id", "created_at"])
    op.create_index(
        "ix_model_calls_tenant_agent_day", "model_calls", ["tenant_id", "agent", "created_at"]
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("agent", sa.String(63), nullable=True),
        sa.Column("amount_usd", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_reservations")),
    )
    op.create_index(op.f("ix_budget_reservations_run_id"), "budget_reservations", ["run_id"])
    op.create_index(op.f("ix_budget_reservations_tenant_id"), "budget_reservations", ["tenant_id"])
    op.create_index(
        "ix_budget_reservations_tenant_agent", "budget_reservations", ["tenant_id", "agent"]
    )
    op.add_column(
        "runs",
        sa.Column("cost_usd", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    enable_row_level_security(op.get_bind())


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("cost_usd")
    op.drop_table("budget_reservations")
    op.drop_table("model_calls")
