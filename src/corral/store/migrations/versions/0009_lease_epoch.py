"""lease_epoch: a fencing token on every run lease (issue 10, item 6).

``runs.lease_epoch`` counts the claims of a run. Every claim increments it, and every write a
worker makes for the run is conditioned on the epoch it claimed, so a worker whose lease was
taken over (by another worker, or by itself after its lease expired) writes nothing more. A new
column on an existing table: row-level security (migration 0004) already covers it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite and PostgreSQL both add a NOT NULL column with a constant default in place.
    op.add_column(
        "runs",
        sa.Column("lease_epoch", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("lease_epoch")
