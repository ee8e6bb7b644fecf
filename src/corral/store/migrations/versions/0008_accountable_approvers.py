"""accountable_approvers: every key names its accountable human; votes count humans; local users.

* ``api_keys.accountable``: the human a key acts for. Existing keys are backfilled in creation
  order: a ``user`` key is accountable to its own principal; a service or agent key to the
  accountable human of the principal that created it (``created_by``) when that is a user or a
  key stored here, else to ``created_by`` itself; a bootstrap key created by ``system`` is
  accountable to its own principal, so it keeps counting as a party of its own. Review the
  result with ``corral keys list`` (column ACCOUNTABLE).
* ``approval_votes.accountable``: existing votes are backfilled with their principal; a unique
  index allows one vote per accountable human and request.
* ``local_users``: named people of the embedded mode (``corral users create``), with
  row-level security on PostgreSQL like every tenant-owned table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import corral.store._base
from corral.store._rls import enable_row_level_security

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = corral.store._base.UTCDateTime()


def _backfill_keys(connection: sa.Connection) -> None:
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.String),
        sa.column("tenant_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("principal", sa.String),
        sa.column("created_by", sa.String),
        sa.column("created_at", _TIME),
        sa.column("accountable", sa.String),
    )
    rows = connection.execute(
        sa.select(
            keys.c.id, keys.c.tenant_id, keys.c.kind, keys.c.principal, keys.c.created_by
        ).order_by(keys.c.created_at, keys.c.id)
    ).all()
    accountable: dict[tuple[str, str], str] = {}  # (tenant, principal) -> human
    for row in rows:
        if row.kind == "user" or row.created_by == "system":
            human = row.principal
        elif row.created_by.startswith("user:"):
            human = row.created_by
        else:
            human = accountable.get((row.tenant_id, row.created_by), row.created_by)
        accountable.setdefault((row.tenant_id, row.principal), human)
        connection.execute(keys.update().where(keys.c.id == row.id).values(accountable=human))


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        # The backfills read and write every tenant's rows: the system scope, for this
        # transaction only (row-level security binds a non-superuser owner, corral.store._rls).
        op.execute("SELECT set_config('corral.tenant_id', '*', true)")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("accountable", sa.String(length=200), nullable=True))
    _backfill_keys(connection)
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("accountable", existing_type=sa.String(length=200), nullable=False)

    with op.batch_alter_table("approval_votes") as batch_op:
        batch_op.add_column(sa.Column("accountable", sa.String(length=200), nullable=True))
    op.execute("UPDATE approval_votes SET accountable = principal")
    with op.batch_alter_table("approval_votes") as batch_op:
        batch_op.alter_column("accountable", existing_type=sa.String(length=200), nullable=False)
    op.create_index(
        "ix_approval_votes_approval_id_accountable",
        "approval_votes",
        ["approval_id", "accountable"],
        unique=True,
    )

    op.create_table(
        "local_users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_local_users")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_local_users_tenant_id_name")),
    )
    op.create_index(op.f("ix_local_users_tenant_id"), "local_users", ["tenant_id"])
    enable_row_level_security(connection)  # PostgreSQL only; see corral.store._rls


def downgrade() -> None:
    op.drop_table("local_users")
    op.drop_index("ix_approval_votes_approval_id_accountable", table_name="approval_votes")
    with op.batch_alter_table("approval_votes") as batch_op:
        batch_op.drop_column("accountable")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("accountable")
