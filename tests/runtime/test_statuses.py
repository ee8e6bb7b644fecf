"""Run, step and tool-call statuses: the enums are what the store holds, in unchanged columns."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from conftest import agent_document, register
from corral.runtime import (
    TERMINAL_STATUSES,
    RunStatus,
    StepKind,
    ToolCallStatus,
    cancel_run,
    get_run,
    list_steps,
    start_run,
)
from corral.runtime._tables import RunRow, StepRow, ToolCallRow
from corral.store._base import Base
from corral.testing import ScriptedModel


async def test_a_run_reads_back_its_statuses_as_the_enums(make_platform: Any, workspace) -> None:
    model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("42")])
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    run = await start_run(
        platform.store,
        tenant_id="default",
        agent_name="repo-analyst",
        task="What?",
        requested_by="user:test",
        requester_roles=("builder",),
        workspace=str(workspace),
        workspaces=platform.workspaces,
    )
    assert run.status is RunStatus.QUEUED
    await platform.worker.run_until_idle()

    async with platform.store.read("default") as session:
        done = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
        stored = (
            await session.execute(text("SELECT status FROM runs WHERE id = :id"), {"id": run.id})
        ).scalar_one()
        kinds = (
            await session.execute(
                text('SELECT kind FROM steps WHERE run_id = :id ORDER BY "index"'),
                {"id": run.id},
            )
        ).scalars()
        call_statuses = (
            await session.execute(
                text("SELECT status FROM tool_calls WHERE run_id = :id"), {"id": run.id}
            )
        ).scalars()
        stored_kinds, stored_calls = list(kinds), list(call_statuses)
    assert done.status is RunStatus.SUCCEEDED
    assert done.status in TERMINAL_STATUSES
    assert [step.kind for step, _ in steps] == [StepKind.TOOL_CALLS, StepKind.FINAL_ANSWER]
    assert all(isinstance(step.kind, StepKind) for step, _ in steps)
    assert [call.status for call in steps[0][1]] == [ToolCallStatus.COMPLETED]
    assert isinstance(steps[0][1][0].status, ToolCallStatus)
    # The columns hold the plain values, as before the enums.
    assert (type(stored), stored) == (str, "SUCCEEDED")
    assert stored_kinds == ["tool_calls", "final_answer"]
    assert stored_calls == ["COMPLETED"]


async def test_cancel_returns_and_stores_a_run_status(make_platform: Any) -> None:
    platform = await make_platform(scripted=ScriptedModel([ScriptedModel.answer("x")]))
    await register(platform, agent_document())
    run = await start_run(
        platform.store,
        tenant_id="default",
        agent_name="repo-analyst",
        task="What?",
        requested_by="user:test",
        requester_roles=("builder",),
    )
    outcome = await cancel_run(platform.store, run.id, tenant_id="default", actor="user:test")
    assert outcome is RunStatus.CANCELLED
    async with platform.store.read("default") as session:
        assert (await get_run(session, run.id, tenant_id="default")).status is RunStatus.CANCELLED


def test_every_value_fits_its_column() -> None:
    for column, enum in (
        (RunRow.__table__.c.status, RunStatus),
        (StepRow.__table__.c.kind, StepKind),
        (ToolCallRow.__table__.c.status, ToolCallStatus),
    ):
        length = column.type.length
        assert length is not None
        assert max(len(member.value) for member in enum) <= length, column


async def test_the_status_columns_are_what_the_migrations_made(make_platform: Any) -> None:
    """The enums changed no column: Alembic autogenerate finds nothing to migrate."""
    platform = await make_platform()

    def differences(connection: Connection) -> list[str]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        found = [repr(diff) for diff in compare_metadata(context, Base.metadata)]
        return [
            diff
            for diff in found
            if any(f"'{table}'" in diff for table in ("runs", "steps", "tool_calls"))
        ]

    async with platform.store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
