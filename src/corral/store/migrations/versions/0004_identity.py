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

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime()

# Rows are visible when their tenant is the session's scope (``corral.tenant_id``, set by
# corral.store.Store at the start of every transaction), when the scope is the system scope
# ``*``, or (reads only) when the row is platform-wide (``tenant_id = '*'``, e.g. a kill switch
# over every tenant). A connection that never set the scope sees nothing.
_USING = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*' OR tenant_id = '*'"
)
_CHECK = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)


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
    if op.get_bind().dialect.name == "postgresql":
        _enable_row_level_security()


def _enable_row_level_security() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in inspector.get_table_names():
        columns = {c["name"] for c in inspector.get_columns(table)}
        if "tenant_id" not in columns:
            continue
        # FORCE: the table owner (the role Corral connects as) is bound by the policy too.
        # Superusers and BYPASSRLS roles never are: do not connect Corral as one.
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
        op.execute(
            f'CREATE POLICY tenant_isolation ON "{table}" USING ({_USING}) WITH CHECK ({_CHECK})'
        )


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
