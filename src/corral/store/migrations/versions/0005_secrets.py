"""secrets: Encrypted secrets of the credential broker (issue 5).

One row per secret and tenant, holding the AES-256-GCM envelope of its current version (never
the value). On PostgreSQL the table gets the tenant row-level security policy of 0004, without
its exception for platform-wide rows: no secret belongs to every tenant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()
_SCOPED = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("master_key_id", sa.String(length=16), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("key_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secrets")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_secrets_tenant_id_name")),
    )
    op.create_index(op.f("ix_secrets_tenant_id"), "secrets", ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE "secrets" ENABLE ROW LEVEL SECURITY')
        op.execute('ALTER TABLE "secrets" FORCE ROW LEVEL SECURITY')
        op.execute(
            f'CREATE POLICY tenant_isolation ON "secrets" USING ({_SCOPED}) WITH CHECK ({_SCOPED})'
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('DROP POLICY IF EXISTS tenant_isolation ON "secrets"')
    op.drop_index(op.f("ix_secrets_tenant_id"), table_name="secrets")
    op.drop_table("secrets")
