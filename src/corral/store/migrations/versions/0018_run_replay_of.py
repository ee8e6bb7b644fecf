"""runs.replay_of and the tenant time indexes of runs (issue 11, item 6).

``runs.replay_of`` names the recorded run a replay replays; it is loaded with the run, so the
tool gateway's replay interceptor no longer reads ``run_replays`` for every run's first call.
Existing replays are backfilled from ``run_replays``. ``ix_runs_tenant_created`` and
``ix_runs_tenant_finished`` serve the portal overview and the SLO evaluator, which scan a
tenant's runs by creation and finish time.

Revision ID: 0018
Revises: 0014
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: an in-place ALTER on both databases.
    op.add_column("runs", sa.Column("replay_of", sa.String(length=40), nullable=True))
    op.execute(
        "UPDATE runs SET replay_of = (SELECT r.source_run_id FROM run_replays r "
        "WHERE r.run_id = runs.id) WHERE id IN (SELECT run_id FROM run_replays)"
    )
    op.create_index("ix_runs_tenant_created", "runs", ["tenant_id", "created_at"])
    op.create_index("ix_runs_tenant_finished", "runs", ["tenant_id", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_tenant_finished", table_name="runs")
    op.drop_index("ix_runs_tenant_created", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("replay_of")
