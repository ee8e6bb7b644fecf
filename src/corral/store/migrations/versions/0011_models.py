"""models: Model documents, model aliases over deployments (issue 12, item 1).

New tables only: ``models`` and ``model_versions`` (Model documents, versioned like agents,
tools and MCP servers). On PostgreSQL they get the row-level security policy of migration
0004.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import corral.store._base

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime(timezone=True)
_TABLES = ("models", "model_versions")

# The same policy as migration 0004 gives every tenant-owned table.
_USING = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*' OR tenant_id = '*'"
)
_CHECK = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("latest_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_models_tenant_id_name")),
    )
    op.create_index(op.f("ix_models_tenant_id"), "models", ["tenant_id"])
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_versions_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_model_versions_model_id_version")),
    )
    op.create_index(op.f("ix_model_versions_model_id"), "model_versions", ["model_id"])
    op.create_index(op.f("ix_model_versions_tenant_id"), "model_versions", ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" '
                f"USING ({_USING}) WITH CHECK ({_CHECK})"
            )


def downgrade() -> None:
    op.drop_index(op.f("ix_model_versions_tenant_id"), table_name="model_versions")
    op.drop_index(op.f("ix_model_versions_model_id"), table_name="model_versions")
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_models_tenant_id"), table_name="models")
    op.drop_table("models")
