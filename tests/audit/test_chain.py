from __future__ import annotations

import itertools
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from conftest import agent_document, register, superuser_transaction
from corral.audit import GENESIS_HASH, append_event, event_hash, verify_chain
from corral.audit._chain import ChainVerification, _Sequencer, _sequencer, chain_pending
from corral.audit._tables import AuditEventRow, AuditHeadRow
from corral.platform import Platform
from corral.runtime import create_run
from corral.store import SYSTEM
from corral.testing import ScriptedModel


async def busy_platform(make_platform, workspace) -> Platform:
    """A platform whose default chain holds applies, two runs and their tool calls."""
    model = ScriptedModel(
        [
            ScriptedModel.call("fs.list_dir", path="."),
            ScriptedModel.answer("first"),
            ScriptedModel.call("fs.read_file", path="../outside"),
            ScriptedModel.answer("second"),
        ]
    )
    platform = await make_platform(scripted=model)
    await register(platform, agent_document())
    await register(platform, agent_document(instructions="Version two."))
    for task in ("one", "two"):
        async with platform.store.transaction("default") as session:
            await create_run(
                session,
                tenant_id="default",
                agent_name="repo-analyst",
                task=task,
                requested_by="user:test",
                workspace=str(workspace),
                workspaces=platform.workspaces,
            )
        await platform.worker.run_until_idle()
    return platform


async def verify(platform: Platform, tenant_id: str = "default") -> ChainVerification:
    async with platform.store.transaction(tenant_id) as session:
        return await verify_chain(session, tenant_id=tenant_id)


async def events(platform: Platform, tenant_id: str = "default") -> list[AuditEventRow]:
    async with platform.store.transaction(tenant_id) as session:
        query = (
            select(AuditEventRow)
            .where(AuditEventRow.tenant_id == tenant_id)
            .order_by(AuditEventRow.seq)
        )
        return list((await session.execute(query)).scalars())


async def tamper(platform: Platform, seq: int, tenant_id: str = "default", **values: Any) -> None:
    """Change a stored event behind the application's back (as a database superuser would:
    the append-only trigger is bypassed, so the chain itself is what must catch the edit)."""
    async with superuser_transaction(platform) as connection:
        await connection.execute(
            update(AuditEventRow.__table__)
            .where(AuditEventRow.tenant_id == tenant_id, AuditEventRow.seq == seq)
            .values(**values)
        )


async def test_chain_of_applies_and_runs_verifies(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    actions = [e.action for e in stored]
    for expected in ("tool.created", "agent.created", "agent.version_created", "run.created"):
        assert expected in actions
    assert actions.count("run.finished") == 2
    assert actions.count("tool.call") == 2
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    assert stored[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
    result = await verify(platform)
    assert result == ChainVerification(True, "default", len(stored))


async def test_edited_details_are_reported_at_that_event(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    victim = next(e for e in stored if e.action == "tool.call")
    await tamper(platform, victim.seq, details={**victim.details, "error_type": None, "x": 1})
    result = await verify(platform)
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_id) == (victim.seq, victim.id)
    assert result.events_checked == victim.seq
    assert "modified" in (result.reason or "")


async def test_edited_outcome_is_reported_at_the_first_bad_event(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    finished = [e for e in stored if e.action == "run.finished"]
    # Two edits: the earlier one is reported.
    await tamper(platform, finished[1].seq, outcome="failed")
    await tamper(platform, finished[0].seq, outcome="failed")
    result = await verify(platform)
    assert (result.ok, result.first_bad_seq) == (False, finished[0].seq)


async def test_edit_with_recomputed_hash_breaks_the_next_link(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    victim = stored[3]
    forged = {c.name: getattr(victim, c.key) for c in AuditEventRow.__table__.columns}
    forged["actor"] = "user:mallory"
    await tamper(platform, victim.seq, actor="user:mallory", hash=event_hash(forged))
    result = await verify(platform)
    assert (result.ok, result.first_bad_seq) == (False, victim.seq + 1)
    assert "prev_hash" in (result.reason or "")


async def test_deleted_middle_event_is_reported(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    middle = stored[len(stored) // 2]
    async with superuser_transaction(platform) as connection:
        await connection.execute(delete(AuditEventRow).where(AuditEventRow.id == middle.id))
    result = await verify(platform)
    assert not result.ok
    # The gap is found at the event after the removed one.
    assert result.first_bad_seq == middle.seq + 1
    assert f"expected seq {middle.seq}" in (result.reason or "")


async def test_deleted_last_event_is_reported_by_the_head(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    stored = await events(platform)
    async with superuser_transaction(platform) as connection:
        await connection.execute(delete(AuditEventRow).where(AuditEventRow.id == stored[-1].id))
    result = await verify(platform)
    assert not result.ok
    assert result.first_bad_seq == stored[-1].seq
    assert result.events_checked == len(stored) - 1
    assert "removed from the end" in (result.reason or "")


async def test_rewritten_last_event_is_reported_by_the_head(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    last = (await events(platform))[-1]
    forged = {c.name: getattr(last, c.key) for c in AuditEventRow.__table__.columns}
    forged["outcome"] = "failed"
    await tamper(platform, last.seq, outcome="failed", hash=event_hash(forged))
    result = await verify(platform)
    assert (result.ok, result.first_bad_seq, result.first_bad_id) == (False, last.seq, last.id)
    assert "head" in (result.reason or "")


async def test_chain_is_per_tenant(make_platform, workspace) -> None:
    platform = await busy_platform(make_platform, workspace)
    async with platform.store.transaction("acme") as session:
        for n in range(3):
            await append_event(
                session,
                tenant_id="acme",
                actor="user:acme",
                action="test.event",
                subject=f"thing:{n}",
                outcome="success",
                details={"n": n},
            )
    acme = await events(platform, "acme")
    assert [e.seq for e in acme] == [1, 2, 3]
    assert acme[0].prev_hash == GENESIS_HASH
    assert (await verify(platform, "acme")) == ChainVerification(True, "acme", 3)
    default_count = len(await events(platform))
    assert (await verify(platform)).events_checked == default_count

    # Breaking one tenant's chain leaves the other's intact.
    await tamper(platform, 2, tenant_id="acme", subject="thing:forged")
    assert (await verify(platform, "acme")).first_bad_seq == 2
    assert (await verify(platform)).ok
    async with platform.store.read(SYSTEM) as session:  # every tenant's head
        rows = await session.execute(select(AuditHeadRow.tenant_id, AuditHeadRow.seq))
        heads = {row.tenant_id: row.seq for row in rows}
    assert heads == {"default": default_count, "acme": 3}


async def test_tenant_without_events_verifies_empty(make_platform) -> None:
    platform = await make_platform()
    assert (await verify(platform, "nobody")) == ChainVerification(True, "nobody", 0)
    async with platform.store.transaction("default") as session:
        count = (
            await session.execute(
                select(func.count())
                .select_from(AuditEventRow)
                .where(AuditEventRow.tenant_id == "nobody")
            )
        ).scalar_one()
    assert count == 0


async def test_postgres_trigger_refuses_update_and_delete_of_audit_rows(make_platform, workspace):
    platform = await busy_platform(make_platform, workspace)
    if platform.store.dialect != "postgresql":
        pytest.skip("the append-only trigger exists on PostgreSQL only")
    stored = await events(platform)
    for statement in (
        update(AuditEventRow.__table__)
        .where(AuditEventRow.seq == stored[0].seq)
        .values(outcome="forged"),
        delete(AuditEventRow).where(AuditEventRow.id == stored[0].id),
    ):
        with pytest.raises(Exception, match="append-only"):
            async with platform.store.transaction("default") as session:
                await session.execute(statement)
    assert (await verify(platform)).ok


# --- appends that find the head held (PostgreSQL: SQLite has one writer) -------------------


async def note(session: Any, subject: str, tenant_id: str = "acme") -> str | None:
    return await append_event(
        session,
        tenant_id=tenant_id,
        actor="user:acme",
        action="test.event",
        subject=subject,
        outcome="success",
        details={"subject": subject},
    )


async def postgres_platform(make_platform) -> Platform:
    platform = await make_platform()
    if platform.store.dialect != "postgresql":
        pytest.skip("only PostgreSQL has concurrent writers: SQLite appends always chain")
    async with platform.store.transaction("acme") as session:
        await note(session, "zero")  # the tenant's head exists
    return platform


async def test_an_append_that_finds_the_head_held_is_chained_by_the_holder(make_platform):
    platform = await postgres_platform(make_platform)
    async with platform.store.transaction("acme") as holder:
        assert await note(holder, "first") is not None  # the holder chains its own event
        async with platform.store.transaction("acme") as other:
            assert await note(other, "second") is None  # did not wait: appended unchained
        async with platform.store.read("acme") as reader:
            pending = next(e for e in await events(platform, "acme") if e.subject == "second")
            assert (pending.seq, pending.hash) == (None, None)
            assert (await verify_chain(reader, tenant_id="acme")).unchained == 1
        # The holder's next append chains the committed event first, then its own.
        assert await note(holder, "third") is not None
    stored = await events(platform, "acme")
    assert [(e.seq, e.subject) for e in stored] == [
        (1, "zero"),
        (2, "first"),
        (3, "second"),
        (4, "third"),
    ]
    assert stored[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
    assert (await verify(platform, "acme")) == ChainVerification(True, "acme", 4)


async def test_an_unchained_tail_is_chained_by_the_sequencer(make_platform) -> None:
    platform = await postgres_platform(make_platform)
    async with platform.store.transaction("acme") as holder:
        await note(holder, "first")
        async with platform.store.transaction("acme") as other:
            await note(other, "second")
        # While the head is held, the sequencer's pass leaves the events to the holder.
        assert await platform.store.run_sync(lambda c: chain_pending(c, "acme"), "acme") is None
    # The holder committed without appending again: "second" is chained by the process's
    # background pass (awaited here), or by the pass verify_chain runs first.
    task = _sequencer(platform.store.engine.sync_engine).task
    assert task is not None
    await task
    stored = await events(platform, "acme")
    assert [(e.seq, e.subject) for e in stored] == [(1, "zero"), (2, "first"), (3, "second")]
    assert await platform.store.run_sync(lambda c: chain_pending(c, "acme"), "acme") == 0
    assert (await verify(platform, "acme")) == ChainVerification(True, "acme", 3)
    # Editing the event chained late is caught like any other edit.
    await tamper(platform, 3, tenant_id="acme", outcome="failure")
    result = await verify(platform, "acme")
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "modified" in (result.reason or "")


async def test_the_trigger_lets_only_the_chaining_update_through(make_platform) -> None:
    platform = await postgres_platform(make_platform)
    async with platform.store.transaction("acme") as holder:
        await note(holder, "first")
        async with platform.store.transaction("acme") as other:
            await note(other, "second")
        # Nobody chains it while the head is held.
        pending = next(e for e in await events(platform, "acme") if e.subject == "second")
        await check_trigger(platform, pending)


async def check_trigger(platform: Platform, pending: AuditEventRow) -> None:
    table = AuditEventRow.__table__
    link = {"seq": 99, "prev_hash": "a" * 64, "hash": "b" * 64}
    for values in ({**link, "actor": "user:mallory"}, {**link, "hash": None}, {"actor": "x"}):
        with pytest.raises(Exception, match="append-only"):
            async with platform.store.transaction("acme") as session:
                await session.execute(
                    update(table).where(table.c.id == pending.id).values(**values)
                )
    async with platform.store.transaction("acme") as session:  # chaining it (once) is allowed
        await session.execute(update(table).where(table.c.id == pending.id).values(**link))
    with pytest.raises(Exception, match="append-only"):
        async with platform.store.transaction("acme") as session:
            await session.execute(
                update(table).where(table.c.id == pending.id).values(hash="c" * 64)
            )


async def test_a_platform_closed_right_after_an_audited_action_leaves_its_chain_whole(
    settings, monkeypatch
) -> None:
    """``Platform.close`` chains what the process appended unchained before the store goes."""
    # The background pass would come only after an hour: only close can chain in time.
    monkeypatch.setattr(_Sequencer, "interval", 3600.0)
    platform = Platform(settings)
    await platform.start()
    await register(platform, agent_document())  # the tenant's head exists
    if platform.store.dialect == "postgresql":
        async with platform.store.transaction("default") as holder:
            await note(holder, "held", tenant_id="default")
            # The apply finds the head held: its audit event is committed unchained.
            await register(platform, agent_document(instructions="Version two."))
            assert [e.hash for e in await events(platform) if e.seq is None] == [None]
    else:  # one writer: every append chains at once
        await register(platform, agent_document(instructions="Version two."))
    await platform.close()

    reopened = Platform(settings)
    try:
        stored = await events(reopened)  # read before verify_chain, which chains first
        assert [e.action for e in stored if e.hash is None] == []
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert (await verify(reopened)).ok
    finally:
        await reopened.close()
