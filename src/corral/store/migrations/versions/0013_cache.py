"""cache: the exact-match model response cache and the tool-result cache (issue 12, item 5).

Two tables of the same shape, keyed by (tenant, digest): ``model_response_cache`` (a model's
response to a deterministic request) and ``tool_result_cache`` (a read-only tool's completed
result). Rows past ``expires_at`` are never served and are deleted as the tenant writes new
ones. On PostgreSQL both get the tenant row-level security policy without the exception for
platform-wide rows: no cache entry belongs to every tenant.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()
_JSON = corral.store._base.JSONType
_SCOPED = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)
_TABLES = {"model_response_cache": "response", "tool_result_cache": "result"}


def upgrade() -> None:
    for table, payload in _TABLES.items():
        extra = (
            [sa.Column("tool", sa.String(length=200), nullable=False)]
            if payload == "result"
            else []
        )
        op.create_table(
            table,
            sa.Column("digest", sa.String(length=64), nullable=False),
            *extra,
            sa.Column(payload, _JSON, nullable=False),
            sa.Column("created_at", _TIME, nullable=False),
            sa.Column("expires_at", _TIME, nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("tenant_id", "digest", name=op.f(f"pk_{table}")),
        )
        op.create_index(op.f(f"ix_{table}_tenant_id"), table, ["tenant_id"])
        op.create_index(f"ix_{table}_expiry", table, ["tenant_id", "expires_at"])
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" '
                f"USING ({_SCOPED}) WITH CHECK ({_SCOPED})"
            )


def downgrade() -> None:
    for table in _TABLES:
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"')
        op.drop_index(f"ix_{table}_expiry", table_name=table)
        op.drop_index(op.f(f"ix_{table}_tenant_id"), table_name=table)
        op.drop_table(table)
