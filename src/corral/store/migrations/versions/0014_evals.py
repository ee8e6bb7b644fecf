"""evals: eval suites (versioned), eval runs and results per case and grader (issue 14, item 1).

``eval_suites``/``eval_suite_versions`` hold ``EvalSuite`` documents as immutable,
content-addressed versions; ``eval_runs`` one eval of a suite version on an agent version (its
digest: the promotion gate reads "a passing eval of this exact digest"); ``eval_case_results``
one run of one case; ``eval_grader_results`` one grader's verdict on it. Dollar amounts are
whole picodollars (``BIGINT``). Every table is tenant-owned: row-level security on PostgreSQL.

Revision ID: 0014
Revises: 0017
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import corral.store._base

revision: str = "0014"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_TIME = corral.store._base.UTCDateTime(timezone=True)
_TABLES = (
    "eval_suites",
    "eval_suite_versions",
    "eval_runs",
    "eval_case_results",
    "eval_grader_results",
)
_USING = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*' OR tenant_id = '*'"
)
_CHECK = (
    "tenant_id = current_setting('corral.tenant_id', true) "
    "OR current_setting('corral.tenant_id', true) = '*'"
)


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(length=64), nullable=False)


def _suites() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("latest_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_suites")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_eval_suites_tenant_id_name")),
    )
    op.create_table(
        "eval_suite_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("suite_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("document", _JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        _tenant(),
        sa.ForeignKeyConstraint(
            ["suite_id"],
            ["eval_suites.id"],
            name=op.f("fk_eval_suite_versions_suite_id_eval_suites"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_suite_versions")),
        sa.UniqueConstraint(
            "suite_id", "version", name=op.f("uq_eval_suite_versions_suite_id_version")
        ),
    )
    op.create_index(op.f("ix_eval_suite_versions_suite_id"), "eval_suite_versions", ["suite_id"])


def _runs() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("suite_name", sa.String(length=63), nullable=False),
        sa.Column("suite_version", sa.String(length=32), nullable=False),
        sa.Column("suite_digest", sa.String(length=71), nullable=False),
        sa.Column("agent_name", sa.String(length=63), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("agent_digest", sa.String(length=71), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("summary", _JSON, nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        _tenant(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    op.create_index("ix_eval_runs_gate", "eval_runs", ["tenant_id", "agent_name", "agent_digest"])
    op.create_table(
        "eval_case_results",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("eval_run_id", sa.String(length=40), nullable=False),
        sa.Column("case_name", sa.String(length=63), nullable=False),
        sa.Column("repeat_index", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("run_status", sa.String(length=24), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cost_usd", sa.BigInteger(), nullable=False),
        sa.Column("judge_cost_usd", sa.BigInteger(), nullable=False),
        sa.Column("latency_seconds", sa.Float(), nullable=True),
        sa.Column("policy_violations", sa.Integer(), nullable=False),
        sa.Column("graded_at", _TIME, nullable=True),
        _tenant(),
        sa.ForeignKeyConstraint(
            ["eval_run_id"],
            ["eval_runs.id"],
            name=op.f("fk_eval_case_results_eval_run_id_eval_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_case_results")),
        sa.UniqueConstraint(
            "eval_run_id",
            "case_name",
            "repeat_index",
            name=op.f("uq_eval_case_results_eval_run_id_case_name_repeat_index"),
        ),
    )
    op.create_index(op.f("ix_eval_case_results_eval_run_id"), "eval_case_results", ["eval_run_id"])


def _graders() -> None:
    op.create_table(
        "eval_grader_results",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("case_result_id", sa.String(length=40), nullable=False),
        sa.Column("eval_run_id", sa.String(length=40), nullable=False),
        sa.Column("grader_index", sa.Integer(), nullable=False),
        sa.Column("grader_name", sa.String(length=100), nullable=False),
        sa.Column("grader_type", sa.String(length=16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("cost_usd", sa.BigInteger(), nullable=False),
        _tenant(),
        sa.ForeignKeyConstraint(
            ["case_result_id"],
            ["eval_case_results.id"],
            name=op.f("fk_eval_grader_results_case_result_id_eval_case_results"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_grader_results")),
        sa.UniqueConstraint(
            "case_result_id",
            "grader_index",
            name=op.f("uq_eval_grader_results_case_result_id_grader_index"),
        ),
    )
    op.create_index(
        op.f("ix_eval_grader_results_case_result_id"), "eval_grader_results", ["case_result_id"]
    )
    op.create_index(
        op.f("ix_eval_grader_results_eval_run_id"), "eval_grader_results", ["eval_run_id"]
    )


def upgrade() -> None:
    _suites()
    _runs()
    _graders()
    for table in _TABLES:
        op.create_index(op.f(f"ix_{table}_tenant_id"), table, ["tenant_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
            op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
            op.execute(
                f'CREATE POLICY tenant_isolation ON "{table}" '
                f"USING ({_USING}) WITH CHECK ({_CHECK})"
            )


def downgrade() -> None:
    for table in reversed(_TABLES):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f'DROP POLICY IF EXISTS tenant_isolation ON "{table}"')
        op.drop_table(table)
