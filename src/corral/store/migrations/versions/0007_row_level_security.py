"""row_level_security: PostgreSQL row-level security on every tenant-owned table that lacks it.

Migration 0004 turned it on for the tables that existed then; tables created later (secrets, MCP
servers and pins) get the same policy here. Every later migration that adds a tenant-owned table
calls :func:`corral.store._rls.enable_row_level_security` for it (docs/adr/0004).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

from corral.store._rls import enable_row_level_security

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    enable_row_level_security(op.get_bind())


def downgrade() -> None:
    pass  # 0004's downgrade removes every tenant_isolation policy
