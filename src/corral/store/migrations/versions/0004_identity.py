"""identity: Tenants, principals, API keys, role grants, quotas (issue 6); per-step cost; and
PostgreSQL row-level security on every tenant-owned table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import corral.store._base
from corral.store._rls import enable_row_level_security

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime()


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("suspended_reason", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("created_by", sa.String(length=200), nullable=False, server_default="system")
        )
        batch_op.add_column(sa.Column("updated_at", _TIME, nullable=True))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("agent_name", sa.String(length=63), nullable=True),
        sa.Column("roles", _JSON, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=True),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.Column("revoked_by", sa.String(length=200), nullable=True),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_api_keys_tenant_id_name")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"])
    op.create_table(
        "role_grants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("granted_by", sa.String(length=200), nullable=False),
        sa.Column("granted_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role_grants")),
        sa.UniqueConstraint(
            "tenant_id", "subject", "role", name=op.f("uq_role_grants_tenant_id_subject_role")
        ),
    )
    op.create_index(op.f("ix_role_grants_subject"), "role_grants", ["subject"])
    op.create_index(op.f("ix_role_grants_tenant_id"), "role_grants", ["tenant_id"])
    op.create_table(
        "quotas",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("limit", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quotas")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_quotas_tenant_id_name")),
    )
    op.create_index(op.f("ix_quotas_tenant_id"), "quotas", ["tenant_id"])
    enable_row_level_security(op.get_bind())  # PostgreSQL only; see corral.store._rls


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        inspector = sa.inspect(op.get_bind())
        for table in inspector.get_table_names():
            if "tenant_id" in {c["name"] for c in inspector.get_columns(table)}:
                op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"')
                op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
                op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
    op.drop_table("quotas")
    op.drop_table("role_grants")
    op.drop_table("api_keys")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("created_by")
        batch_op.drop_column("suspended_reason")
