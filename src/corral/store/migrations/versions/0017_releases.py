"""releases: traffic splits, experiments, rollouts and their decisions (issue 14, items 4 and 6).

``traffic_splits`` and ``traffic_assignments`` belong to the registry (the runtime reads the
split when it creates a run); ``experiments``, ``rollouts`` and ``release_decisions`` to
``corral.releases``. On PostgreSQL each gets the tenant row-level security policy.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()
_JSON = corral.store._base.JSONType
_SCOPED = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)
_TABLES = (
    "traffic_splits",
    "traffic_assignments",
    "experiments",
    "rollouts",
    "release_decisions",
)


def _tenant() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("tenant_id", sa.String(length=64), nullable=False)


def _agent(table: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "agent_id",
        sa.String(length=40),
        sa.ForeignKey("agents.id", name=f"fk_{table}_agent_id_agents"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "traffic_splits",
        sa.Column("id", sa.String(length=40), nullable=False),
        _agent("traffic_splits"),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key_by", sa.String(length=16), nullable=False),
        sa.Column("variants", _JSON, nullable=False),
        sa.Column("shadow_version_id", sa.String(length=40), nullable=True),
        sa.Column("updated_at", _TIME, nullable=False),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name="pk_traffic_splits"),
        sa.UniqueConstraint("agent_id", "stage", name="uq_traffic_splits_agent_id_stage"),
    )
    op.create_table(
        "traffic_assignments",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("split_id", sa.String(length=40), nullable=False),
        sa.Column("variant", sa.String(length=63), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("shadow_of", sa.String(length=40), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        _tenant(),
        sa.PrimaryKeyConstraint("run_id", name="pk_traffic_assignments"),
    )
    op.create_index("ix_traffic_assignments_split_id", "traffic_assignments", ["split_id"])
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        _agent("experiments"),
        sa.Column("agent_name", sa.String(length=63), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("key_by", sa.String(length=16), nullable=False),
        sa.Column("variants", _JSON, nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("min_samples", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("max_duration_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("winner", sa.String(length=63), nullable=True),
        sa.Column("started_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("ended_at", _TIME, nullable=True),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        _agent("rollouts"),
        sa.Column("agent_name", sa.String(length=63), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("candidate_version", sa.String(length=32), nullable=False),
        sa.Column("baseline_version", sa.String(length=32), nullable=False),
        sa.Column("steps", _JSON, nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("step_minutes", sa.Integer(), nullable=False),
        sa.Column("step_started_at", _TIME, nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("max_error_rate_increase", sa.Float(), nullable=False),
        sa.Column("max_latency_increase_ratio", sa.Float(), nullable=False),
        sa.Column("max_cost_increase_ratio", sa.Float(), nullable=False),
        sa.Column("min_canary_runs", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("started_by", sa.String(length=200), nullable=False),
        sa.Column("started_roles", _JSON, nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("ended_at", _TIME, nullable=True),
        sa.Column("evaluated_at", _TIME, nullable=True),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
    )
    op.create_table(
        "release_decisions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("subject_id", sa.String(length=40), nullable=False),
        sa.Column("decision", sa.String(length=24), nullable=False),
        sa.Column("details", _JSON, nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name="pk_release_decisions"),
    )
    op.create_index("ix_release_decisions_subject_id", "release_decisions", ["subject_id"])
    for table in _TABLES:
        op.create_index(f"ix_{table}_tenant_id", table, ["tenant_id"])
    for table in ("traffic_splits", "experiments", "rollouts"):
        op.create_index(f"ix_{table}_agent_id", table, ["agent_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" '
                f"USING ({_SCOPED}) WITH CHECK ({_SCOPED})"
            )


def downgrade() -> None:
    for table in reversed(_TABLES):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"')
        op.drop_table(table)
