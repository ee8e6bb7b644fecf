"""session_revocation: portal sessions ended server-side (issue 13).

``session_revocations`` holds the ids of logged-out portal sessions until they would have
expired; ``session_cutoffs`` one ``not_before`` time per principal ("sign out everywhere", an
admin's sign-out). Both are tenant-owned: row-level security covers them on PostgreSQL.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base
from corral.store._rls import enable_row_level_security

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "session_revocations",
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session_revocations")),
    )
    op.create_index(
        op.f("ix_session_revocations_expires_at"), "session_revocations", ["expires_at"]
    )
    op.create_index(op.f("ix_session_revocations_tenant_id"), "session_revocations", ["tenant_id"])
    op.create_table(
        "session_cutoffs",
        sa.Column("principal", sa.String(200), nullable=False),
        sa.Column("not_before", _TIME, nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "principal", name=op.f("pk_session_cutoffs")),
    )
    op.create_index(op.f("ix_session_cutoffs_tenant_id"), "session_cutoffs", ["tenant_id"])
    enable_row_level_security(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('DROP POLICY IF EXISTS tenant_isolation ON "session_cutoffs"')
        op.execute('DROP POLICY IF EXISTS tenant_isolation ON "session_revocations"')
    op.drop_index(op.f("ix_session_cutoffs_tenant_id"), table_name="session_cutoffs")
    op.drop_table("session_cutoffs")
    op.drop_index(op.f("ix_session_revocations_tenant_id"), table_name="session_revocations")
    op.drop_index(op.f("ix_session_revocations_expires_at"), table_name="session_revocations")
    op.drop_table("session_revocations")
