"""``start_run``: the one call behind ``POST /v1/agents/{name}/runs`` (stage, quota, policy)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from conftest import agent_document, register
from corral.audit._tables import AuditEventRow
from corral.errors import Forbidden, NotFound, PolicyRefused, QuotaExceeded
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.runtime import RunStatus, start_run
from corral.runtime._tables import RunRow
from corral.tenancy import Principal, set_quota
from corral.testing import ScriptedModel


async def _count(platform: Platform, table: Any, *where: Any) -> int:
    async with platform.store.read("default") as session:
        query = select(func.count()).select_from(table).where(*where)
        return int((await session.execute(query)).scalar_one())


async def _start(platform: Platform, roles: tuple[str, ...], **kw: Any) -> Any:
    return await start_run(
        platform.store,
        tenant_id="default",
        agent_name="repo-analyst",
        task="What?",
        requested_by=kw.pop("requested_by", "service:ci"),
        requester_roles=roles,
        governance=platform.governance,
        quotas=platform.quotas,
        **kw,
    )


async def test_production_needs_the_operator_role(make_platform: Any) -> None:
    platform = await make_platform(scripted=ScriptedModel([]))
    await register(platform, agent_document())
    with pytest.raises(Forbidden, match="needs the operator role") as refused:
        await _start(platform, ("builder",), stage="production")
    assert refused.value.code == "permission_denied"
    assert await _count(platform, RunRow) == 0
    assert (await _start(platform, ("builder",))).status is RunStatus.QUEUED  # dev
    with pytest.raises(NotFound, match="no version promoted to 'production'"):
        await _start(platform, ("operator",), stage="production")  # past the role check


async def test_a_used_up_run_quota_refuses_in_the_same_call(make_platform: Any) -> None:
    platform = await make_platform(scripted=ScriptedModel([]))
    await register(platform, agent_document())
    admin = Principal("user:test", "default", frozenset({"admin"}), "user")
    await set_quota(platform.store, admin, name="concurrent_runs", limit="1")
    platform.quotas.invalidate("default")
    await _start(platform, ("builder",))
    with pytest.raises(QuotaExceeded) as exceeded:
        await _start(platform, ("builder",))
    assert (exceeded.value.quota, exceeded.value.current) == ("concurrent_runs", "1")
    assert await _count(platform, RunRow) == 1


async def test_a_policy_refusal_is_stored_by_the_service_after_the_rollback(
    make_platform: Any,
) -> None:
    platform = await make_platform(scripted=ScriptedModel([]))
    cedar = (
        '@id("no-ci")\n@reason("CI may not invoke agents.")\n'
        'forbid (principal == ServiceAccount::"service:ci", action == Action::"agent.invoke", '
        "resource);"
    )
    policy = {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "no-ci"},
        "spec": {"description": "No CI runs.", "cedar": cedar},
    }
    await register(platform, agent_document(), policy)
    with pytest.raises(PolicyRefused, match="no-ci") as refused:
        await _start(platform, ("builder",))
    assert await _count(platform, RunRow) == 0
    stored = await _count(
        platform, PolicyDecisionRow, PolicyDecisionRow.id == refused.value.decision_id
    )
    events = await _count(
        platform,
        AuditEventRow,
        AuditEventRow.policy_decision_id == refused.value.decision_id,
        AuditEventRow.outcome == "denied",
    )
    assert (stored, events) == (1, 1)


async def test_a_run_without_a_traffic_split_reads_splits_only_in_the_stage_lookup(
    make_platform: Any,
) -> None:
    platform = await make_platform(scripted=ScriptedModel([]))
    await register(platform, agent_document())
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        run = await _start(platform, ("builder",))
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert run.status is RunStatus.QUEUED
    splits = [s for s in statements if "traffic_splits" in s]
    # One statement resolves the stage's version and whether a split is active; none else.
    assert len(splits) == 1
    assert "stage_bindings" in splits[0]
