"""audit sequencer: events may be committed before they are chained (issue 11, item 6).

A transaction that finds the tenant's chain head held by another appends its audit events
unchained (``seq``, ``prev_hash`` and ``hash`` empty) instead of waiting; whoever holds the head
next chains them (ADR 0006). So the three columns become nullable, a partial index finds the
unchained events, and on PostgreSQL the append-only trigger lets exactly one UPDATE through:
the one that chains an unchained row without touching anything else. Every other UPDATE and
every DELETE is still refused.

Downgrading requires every event to be chained (``corral audit verify`` chains them first).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONTENT = (
    "id",
    "tenant_id",
    "occurred_at",
    "actor",
    "action",
    "subject",
    "outcome",
    "run_id",
    "trace_id",
    "policy_decision_id",
    "details",
)

_GUARD = """
CREATE OR REPLACE FUNCTION corral_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
        AND NEW.seq IS NOT NULL AND NEW.prev_hash IS NOT NULL
        AND {unchanged} THEN
        RETURN NEW;  -- chaining a committed unchained event: once, content untouched
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
""".format(unchanged=" AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _CONTENT))

_REFUSE_ALL = """
CREATE OR REPLACE FUNCTION corral_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        for column, type_ in (("seq", sa.BigInteger()), ("prev_hash", sa.String(64))):
            batch.alter_column(column, existing_type=type_, nullable=True)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=True)
    op.create_index(
        "ix_audit_events_unchained",
        "audit_events",
        ["tenant_id", "id"],
        postgresql_where=sa.text("hash IS NULL"),
        sqlite_where=sa.text("hash IS NULL"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_GUARD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_REFUSE_ALL)
    op.drop_index("ix_audit_events_unchained", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        for column, type_ in (
            ("seq", sa.BigInteger()),
            ("prev_hash", sa.String(64)),
            ("hash", sa.String(64)),
        ):
            batch.alter_column(column, existing_type=type_, nullable=False)
