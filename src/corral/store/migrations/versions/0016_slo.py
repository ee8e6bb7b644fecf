"""slo: each agent objective's breach state, and the SLO evaluator's lease (issue 13, item 6).

``slo_states`` holds, per tenant, agent and objective, whether it is breached as last judged
(tenant-owned: row-level security covers it on PostgreSQL). ``slo_evaluator`` is one row per
evaluator: who judged last and when, so that one worker of N judges per interval (platform
work in the system scope, no tenant column).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base
from corral.store._rls import enable_row_level_security

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "slo_states",
        sa.Column("agent_name", sa.String(63), nullable=False),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("breached", sa.Boolean(), nullable=False),
        sa.Column("limit_value", sa.String(64), nullable=False),
        sa.Column("observed_value", sa.String(64), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("changed_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "agent_name", "objective", name=op.f("pk_slo_states")),
    )
    op.create_index(op.f("ix_slo_states_tenant_id"), "slo_states", ["tenant_id"])
    op.create_table(
        "slo_evaluator",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("evaluated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_slo_evaluator")),
    )
    enable_row_level_security(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('DROP POLICY IF EXISTS tenant_isolation ON "slo_states"')
    op.drop_table("slo_evaluator")
    op.drop_index(op.f("ix_slo_states_tenant_id"), table_name="slo_states")
    op.drop_table("slo_states")
