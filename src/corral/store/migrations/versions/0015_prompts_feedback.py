"""prompts, feedback, replays: Prompt documents, ratings of runs, replayed runs (issue 14).

New tables only: ``prompts`` and ``prompt_versions`` (Prompt documents, versioned like agents),
``run_feedback`` (one row per rating of a run) and ``run_replays`` (which run replays which
recorded run, and how). On PostgreSQL they get the row-level security policy of migration
0004 (feedback and replays without the exception for platform-wide rows).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import corral.store._base

revision: str = "0015"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime(timezone=True)

# The same policy as migration 0004 gives every tenant-owned table.
_USING = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*' OR tenant_id = '*'"
)
_CHECK = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)
_POLICIES = {
    "prompts": _USING,
    "prompt_versions": _USING,
    "run_feedback": _CHECK,
    "run_replays": _CHECK,
}


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("latest_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_prompts_tenant_id_name")),
    )
    op.create_index(op.f("ix_prompts_tenant_id"), "prompts", ["tenant_id"])
    op.create_table(
        "prompt_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("prompt_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_versions_prompt_id_prompts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_versions")),
        sa.UniqueConstraint(
            "prompt_id", "version", name=op.f("uq_prompt_versions_prompt_id_version")
        ),
    )
    op.create_index(op.f("ix_prompt_versions_prompt_id"), "prompt_versions", ["prompt_id"])
    op.create_index(op.f("ix_prompt_versions_tenant_id"), "prompt_versions", ["tenant_id"])
    _create_feedback()
    op.create_table(
        "run_replays",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("source_run_id", sa.String(length=40), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_run_replays")),
    )
    op.create_index(op.f("ix_run_replays_source_run_id"), "run_replays", ["source_run_id"])
    op.create_index(op.f("ix_run_replays_tenant_id"), "run_replays", ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table, using in _POLICIES.items():
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" USING ({using}) WITH CHECK ({_CHECK})'
            )


def _create_feedback() -> None:
    op.create_table(
        "run_feedback",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("agent_name", sa.String(length=63), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_feedback")),
    )
    op.create_index(op.f("ix_run_feedback_run_id"), "run_feedback", ["run_id"])
    op.create_index(op.f("ix_run_feedback_tenant_id"), "run_feedback", ["tenant_id"])
    op.create_index(
        "ix_run_feedback_agent", "run_feedback", ["tenant_id", "agent_name", "agent_version"]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _POLICIES:
            op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"')
    op.drop_table("run_replays")
    op.drop_table("run_feedback")
    op.drop_table("prompt_versions")
    op.drop_table("prompts")
