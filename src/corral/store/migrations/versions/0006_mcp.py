"""mcp: MCP servers, tool pinning and quarantine (issue 5).

New tables only: ``mcp_servers`` and ``mcp_server_versions`` (McpServer documents, versioned
like agents and tools) and ``mcp_tool_pins`` (the upstream digest each imported tool was last
seen with and the digest approved for it). On PostgreSQL they get the row-level security
policy of migration 0004.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import corral.store._base

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime(timezone=True)
_TABLES = ("mcp_servers", "mcp_server_versions", "mcp_tool_pins")

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
        "mcp_servers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("transport", sa.String(length=16), nullable=False),
        sa.Column("latest_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mcp_servers")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_mcp_servers_tenant_id_name")),
    )
    op.create_index(op.f("ix_mcp_servers_tenant_id"), "mcp_servers", ["tenant_id"])
    op.create_table(
        "mcp_server_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("server_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["server_id"],
            ["mcp_servers.id"],
            name=op.f("fk_mcp_server_versions_server_id_mcp_servers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mcp_server_versions")),
        sa.UniqueConstraint(
            "server_id", "version", name=op.f("uq_mcp_server_versions_server_id_version")
        ),
    )
    op.create_index(op.f("ix_mcp_server_versions_server_id"), "mcp_server_versions", ["server_id"])
    op.create_index(op.f("ix_mcp_server_versions_tenant_id"), "mcp_server_versions", ["tenant_id"])
    op.create_table(
        "mcp_tool_pins",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tool_name", sa.String(length=63), nullable=False),
        sa.Column("server_name", sa.String(length=63), nullable=False),
        sa.Column("upstream_name", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("approved_digest", sa.String(length=71), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("approved_by", sa.String(length=200), nullable=True),
        sa.Column("approved_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mcp_tool_pins")),
        sa.UniqueConstraint(
            "tenant_id", "tool_name", name=op.f("uq_mcp_tool_pins_tenant_id_tool_name")
        ),
    )
    op.create_index(op.f("ix_mcp_tool_pins_server_name"), "mcp_tool_pins", ["server_name"])
    op.create_index(op.f("ix_mcp_tool_pins_tenant_id"), "mcp_tool_pins", ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" '
                f"USING ({_USING}) WITH CHECK ({_CHECK})"
            )


def downgrade() -> None:
    op.drop_index(op.f("ix_mcp_tool_pins_tenant_id"), table_name="mcp_tool_pins")
    op.drop_index(op.f("ix_mcp_tool_pins_server_name"), table_name="mcp_tool_pins")
    op.drop_table("mcp_tool_pins")
    op.drop_index(op.f("ix_mcp_server_versions_tenant_id"), table_name="mcp_server_versions")
    op.drop_index(op.f("ix_mcp_server_versions_server_id"), table_name="mcp_server_versions")
    op.drop_table("mcp_server_versions")
    op.drop_index(op.f("ix_mcp_servers_tenant_id"), table_name="mcp_servers")
    op.drop_table("mcp_servers")
