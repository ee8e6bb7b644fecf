"""runs.session_id: the caller's session a run belongs to (issue 14, item 1).

An experiment keyed by session (``key_by = "session"``) hashes a run's session id, so the runs
of one session share a variant. Nullable: runs created without a session (and every run before
this migration) have none, and such an experiment keys them by their run id.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: an in-place ALTER on both databases.
    op.add_column("runs", sa.Column("session_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("session_id")
