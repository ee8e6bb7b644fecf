"""Invariants 1, 2, 3, 6, 10, 11 and 15 of DESIGN.md ("Invariants"), on SQLite and PostgreSQL.

Each test tries to break its invariant the way a caller, a model or a policy author could:
unknown and look-alike names, old versions and stage bindings of retired agents, tools outside
the contract, a permit-everything policy, dotted and symlinked paths, a refused caller, a busy
audit chain edited behind the application's back. Tools are counting probes
(:mod:`_world`), so "refused" also means "never executed".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _world import World, open_world, policy_document
from sqlalchemy import func, select, update

from conftest import agent_document
from corral.approvals._tables import ApprovalRow
from corral.audit._tables import AuditEventRow
from corral.errors import InvalidRequest, KillSwitchEngaged, NotFound, PolicyDenied, PolicyRefused
from corral.policy._tables import PolicyRow, PolicyVersionRow
from corral.registry import bind_stage, get_agent_version
from corral.registry._tables import AgentRow
from corral.runtime import (
    cancel_run,
    engage_kill_switch,
    release_kill_switch,
    resume_run,
    start_run,
)
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import utcnow
from corral.testing import ScriptedModel

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
call = ScriptedModel.call


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with open_world(settings) as opened:
        yield opened


async def count_rows(world: World, table: Any) -> int:
    async with world.platform.store.read("default") as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


async def post_run(world: World, agent: str = "repo-analyst", **body: Any) -> Any:
    headers = body.pop("headers", {})
    body.setdefault("task", "Probe things.")
    return await world.client.post(f"/v1/agents/{agent}/runs", json=body, headers=headers)


async def bind(world: World, stage: str, version: str, agent: str = "repo-analyst") -> None:
    """Bind a stage to a version, as a promotion does."""
    async with world.platform.store.transaction("default") as session:
        row, version_row = await get_agent_version(session, agent, version, tenant_id="default")
        await bind_stage(session, row, version_row, stage, actor="user:test", tenant_id="default")


# --- 1 An unknown agent cannot run ----------------------------------------------------------------


async def test_1_unknown_agent_cannot_run(world: World) -> None:
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}))
    await world.apply(agent_document("acme-only", tools={"allowed": ["probe.*"]}), tenant_id="acme")

    # Look-alike names, another tenant's agent, a version or stage that does not exist.
    for name in ("nope", "Repo-Analyst", "repo-analyst ", "acme-only"):
        with pytest.raises(NotFound):
            await world.start(name)
    with pytest.raises(NotFound):
        await world.start(version="9.9.9")
    with pytest.raises(NotFound):
        await world.start(stage="staging")

    for agent, body in [
        ("nope", {"stage": "dev"}),
        ("acme-only", {"stage": "dev"}),
        ("repo-analyst", {"stage": "dev", "version": "9.9.9"}),
        ("repo-analyst", {}),  # the API runs stage production, which nothing is bound to
    ]:
        response = await post_run(world, agent, **body)
        assert response.status_code == 404, (agent, body, response.text)
    unknown = (await post_run(world, "nope", stage="dev")).json()
    assert unknown["code"] == "agent_not_found" and unknown["known"] == ["repo-analyst"]

    assert await count_rows(world, RunRow) == 0
    assert world.probe.count() == 0


# --- 2 An inactive, retired or killed agent cannot run --------------------------------------------


async def test_2_retired_agent_cannot_run_by_any_version_or_stage(world: World) -> None:
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}))  # 0.1.0, active
    await bind(world, "production", "0.1.0")  # promoted before the agent was retired
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}, status="retired"))  # 0.1.1

    # The retired latest version, the older active version by number, the stage still bound
    # to that older version: none of them runs.
    for kw in ({}, {"version": "0.1.0"}, {"stage": "production"}):
        with pytest.raises(PolicyDenied) as refused:
            await world.start(**kw)
        assert refused.value.code == "agent_retired", kw
    for body in ({}, {"stage": "dev"}, {"stage": "dev", "version": "0.1.0"}):
        response = await post_run(world, **body)
        assert (response.status_code, response.json()["code"]) == (403, "agent_retired"), body
    assert await count_rows(world, RunRow) == 0

    # Applying an active version brings it back.
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}, status="active"))
    run_id = await world.execute(call("probe.read"))
    assert (await world.run(run_id)).status == "SUCCEEDED"
    assert world.probe.count() == 1


async def test_2_draft_agent_runs_only_in_dev(world: World) -> None:
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}, status="draft"))
    await bind(world, "staging", "0.1.0")
    await bind(world, "production", "0.1.0")

    for stage in ("staging", "production"):
        with pytest.raises(PolicyDenied) as refused:
            await world.start(stage=stage)
        assert refused.value.code == "agent_draft"
    with pytest.raises(InvalidRequest):  # an explicit version runs only in dev
        await world.start(stage="production", version="0.1.0")
    response = await post_run(world)
    assert (response.status_code, response.json()["code"]) == (403, "agent_draft")
    assert await count_rows(world, RunRow) == 0

    run_id = await world.execute(call("probe.read"))  # stage dev
    assert (await world.run(run_id)).status == "SUCCEEDED"


async def test_2_killed_agent_cannot_run(world: World) -> None:
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}))
    store = world.platform.store
    world.script[:] = [call("probe.read")]
    queued = await world.start()  # before the switch: never starts after it

    await engage_kill_switch(
        store,
        scope="agent",
        target="repo-analyst",
        tenant_id="default",
        reason="incident 42",
        actor="user:ops",
    )
    with pytest.raises(KillSwitchEngaged):
        await world.start()
    assert (await post_run(world, stage="dev")).status_code == 423
    await world.drive()
    assert (await world.run(queued)).status == "KILLED"
    assert world.probe.count() == 0
    await release_kill_switch(
        store, scope="agent", target="repo-analyst", tenant_id="default", actor="user:ops"
    )

    for scope, target in (("tenant", "default"), ("platform", "*")):
        await engage_kill_switch(
            store, scope=scope, target=target, tenant_id="default", reason="drill", actor="user:ops"
        )
        with pytest.raises(KillSwitchEngaged):
            await world.start()
        assert (await post_run(world, stage="dev")).status_code == 423
        await release_kill_switch(
            store, scope=scope, target=target, tenant_id="default", actor="user:ops"
        )

    run_id = await world.execute(call("probe.read"))  # released: it runs again
    assert (await world.run(run_id)).status == "SUCCEEDED"
    assert world.probe.count() == 1


# --- 3 An agent cannot call a tool that is unregistered or not allowed to it ---------------------


async def test_3_tools_outside_the_contract_are_denied_and_never_executed(world: World) -> None:
    tools = {"allowed": ["probe.read", "probe.ghost", "probe.w*"], "denied": ["probe.write"]}
    await world.apply(agent_document(tools=tools))
    # A tenant policy that permits everything does not widen the contract.
    await world.apply(policy_document("permit-everything", "permit (principal, action, resource);"))
    refused = [
        call("probe.ghost"),  # allowed by the contract, never registered
        call("probe.other"),  # registered, not allowed
        call("probe.write", n=1),  # allowed by a wildcard, denied by name
        call("Probe.Read"),  # a look-alike of an allowed tool
        call("probe.destroy"),  # registered, destructive, not allowed
    ]
    run_id = await world.execute([*refused, call("probe.read", n=1)])

    calls = await world.calls(run_id)
    assert [(c.tool_name, c.status) for c in calls] == [
        ("probe.ghost", "DENIED"),
        ("probe.other", "DENIED"),
        ("probe.write", "DENIED"),
        ("Probe.Read", "DENIED"),
        ("probe.destroy", "DENIED"),
        ("probe.read", "COMPLETED"),
    ]
    assert {c.error_type for c in calls[:5]} == {"tool_not_allowed"}
    assert world.probe.executions == [("probe.read", {"n": 1})]


async def test_3_tools_of_another_tenant_are_not_callable(world: World) -> None:
    # The probes are registered in tenant "default" only.
    await world.apply(agent_document(tools={"allowed": ["probe.*"]}), tenant_id="acme")
    world.script[:] = [call("probe.read")]
    run_id = await world.start(tenant_id="acme")
    await world.drive()
    calls = await world.calls(run_id, tenant_id="acme")
    assert [(c.status, c.error_type) for c in calls] == [("DENIED", "tool_not_allowed")]
    assert "not registered" in (calls[0].error or "")
    assert world.probe.count() == 0


async def test_3_tenant_policy_forbidding_a_tool_denies_it_at_once(world: World) -> None:
    await world.apply(
        agent_document(tools={"allowed": ["probe.*"]}),
        agent_document("other-bot", tools={"allowed": ["probe.*"]}),
    )
    first = await world.execute(call("probe.read", n=0))  # the tenant's engine is now cached
    assert [c.status for c in await world.calls(first)] == ["COMPLETED"]

    cedar = (
        '@id("analyst-no-probe-read")\n'
        '@reason("repo-analyst must not call probe.read.")\n'
        'forbid (principal == Agent::"repo-analyst", action == Action::"tool.call", '
        'resource == Tool::"probe.read");'
    )
    response = await world.client.post(
        "/v1/apply", json={"documents": [policy_document("analyst-guard", cedar)]}
    )
    assert response.status_code == 200, response.text

    # The very next run is governed by it (no wait for the engine cache to expire).
    denied = await world.execute(call("probe.read", n=1))
    (refused,) = await world.calls(denied)
    assert (refused.status, refused.error_type) == ("DENIED", "policy_denied")
    assert "analyst-no-probe-read" in (refused.error or "")
    assert world.probe.executions == [("probe.read", {"n": 0})]

    other = await world.execute(call("probe.read", n=2), agent="other-bot")
    assert [c.status for c in await world.calls(other)] == ["COMPLETED"]
    assert world.probe.count("probe.read") == 2


# --- 6 No irreversible action without approval ----------------------------------------------------


async def test_6_destructive_tool_allowed_by_wildcard_is_denied(world: World) -> None:
    await world.apply(
        agent_document(tools={"allowed": ["probe.*"]}),
        policy_document(
            "permit-destroy",
            'permit (principal, action == Action::"tool.call", resource == Tool::"probe.destroy");',
        ),
    )
    run_id = await world.execute(call("probe.destroy", n=1))  # stage dev
    (refused,) = await world.calls(run_id)
    assert (refused.status, refused.error_type) == ("DENIED", "policy_denied")
    assert "tool-destructive-not-allowed" in (refused.error or "")
    (decision,) = await world.decisions(run_id=run_id, action="tool.call")
    assert (decision.decision, decision.determining_policies) == (
        "deny",
        ["tool-destructive-not-allowed"],
    )
    assert world.probe.count() == 0


async def approvals_of(world: World, run_id: str) -> list[ApprovalRow]:
    async with world.platform.store.read("default") as session:
        query = select(ApprovalRow).where(ApprovalRow.run_id == run_id)
        return list((await session.execute(query.order_by(ApprovalRow.created_at))).scalars())


async def test_6_named_destructive_tool_waits_for_approval_in_dev(world: World) -> None:
    await world.apply(agent_document(tools={"allowed": ["probe.read", "probe.destroy"]}))
    store = world.platform.store
    run_id = await world.execute(call("probe.destroy", n=7))  # stage dev

    assert (await world.run(run_id)).status == "AWAITING_APPROVAL"
    (pending,) = await approvals_of(world, run_id)
    assert (pending.status, pending.policy_ids) == ("pending", ["tool-destructive-needs-approval"])
    decision = await world.decision(pending.policy_decision_id)
    assert decision is not None and decision.decision == "require_approval"
    assert world.probe.count() == 0

    # No worker picks a paused run; resuming it without an approval only asks again.
    await world.drive()
    await resume_run(store, run_id, tenant_id="default", actor="user:test")
    await world.drive()
    assert (await world.run(run_id)).status == "AWAITING_APPROVAL"
    assert [a.status for a in await approvals_of(world, run_id)] == ["pending", "pending"]
    assert world.probe.count() == 0

    # Approved (as the approvals service records it), it runs once.
    latest = (await approvals_of(world, run_id))[-1]
    async with store.transaction("default") as session:
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.id == latest.id)
            .values(status="approved", decided_at=utcnow())
        )
    await resume_run(store, run_id, tenant_id="default", actor="user:approver")
    await world.drive()
    assert (await world.run(run_id)).status == "SUCCEEDED"
    assert world.probe.executions == [("probe.destroy", {"n": 7})]
    assert [c.status for c in await world.calls(run_id)] == ["COMPLETED"]


def guardrails() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / "policies/guardrails.yaml").read_text())
    return document


async def test_6_path_policy_sees_the_canonical_path(world: World, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "secrets").mkdir(parents=True)
    (workspace / "docs").mkdir()
    (workspace / "secrets" / "key.txt").write_text("TOP-SECRET-VALUE\n")
    (workspace / "docs" / "readme.md").write_text("hello\n")
    (workspace / "public").symlink_to(workspace / "secrets", target_is_directory=True)
    await world.apply(agent_document(), guardrails())  # the agent may call fs.*

    sneaky = [
        "secrets/key.txt",
        "./secrets/key.txt",
        "docs/../secrets/key.txt",
        "secrets//key.txt",
        "secrets/./key.txt",
        "public/key.txt",  # a symlink into secrets/
    ]
    steps = [call("fs.read_file", path=path) for path in sneaky]
    steps += [call("fs.list_dir", path="./secrets"), call("fs.read_file", path="docs/readme.md")]
    run_id = await world.execute(steps, workspace=str(workspace))

    calls = await world.calls(run_id)
    assert [(c.arguments["path"], c.status) for c in calls] == [
        *((path, "DENIED") for path in [*sneaky, "./secrets"]),
        ("docs/readme.md", "COMPLETED"),
    ]
    assert all("no-secrets-read" in (c.error or "") for c in calls[:-1])
    assert all("TOP-SECRET" not in (c.output or "") for c in calls)
    decisions = await world.decisions(run_id=run_id, action="tool.call")
    assert [d.determining_policies for d in decisions][:-1] == [["no-secrets-read"]] * 7


async def test_6_path_policy_applies_to_a_run_without_workspace(world: World) -> None:
    cedar = (
        '@id("probe-no-secrets")\n'
        'forbid (principal, action == Action::"tool.call", resource == Tool::"probe.read")\n'
        'when { context has path && (context.path == "secrets" || context.path like "secrets/*") };'
    )
    await world.apply(
        agent_document(tools={"allowed": ["probe.*"]}), policy_document("probe-guard", cedar)
    )
    sneaky = ["secrets/x", "./secrets/x", "a/../secrets/x"]
    run_id = await world.execute(
        [*(call("probe.read", path=path) for path in sneaky), call("probe.read", path="public/x")]
    )
    calls = await world.calls(run_id)
    assert [c.status for c in calls] == ["DENIED", "DENIED", "DENIED", "COMPLETED"]
    assert world.probe.executions == [("probe.read", {"path": "public/x"})]


# --- 10 Every high-impact action emits an audit event referencing its policy decision ------------


async def test_10_runs_and_tool_calls_reference_stored_decisions(world: World) -> None:
    cedar = (
        '@id("no-probe-other")\n'
        'forbid (principal, action == Action::"tool.call", resource == Tool::"probe.other");'
    )
    await world.apply(
        agent_document(tools={"allowed": ["probe.*"]}), policy_document("probe-guard", cedar)
    )
    run_id = await world.execute(
        [call("probe.read"), call("probe.write", n=1), call("probe.other"), call("probe.ghost")]
    )
    events = await world.events(run_id=run_id)

    (created,) = [e for e in events if e.action == "run.created"]
    invoke = await world.decision(created.policy_decision_id)
    assert invoke is not None
    assert (invoke.action, invoke.decision, invoke.principal, invoke.resource) == (
        "agent.invoke",
        "allow",
        'User::"user:test"',
        'Agent::"repo-analyst"',
    )

    tool_events = {e.subject: e for e in events if e.action == "tool.call"}
    assert set(tool_events) == {
        "tool:probe.read",
        "tool:probe.write",
        "tool:probe.other",
        "tool:probe.ghost",
    }
    for subject, verdict in [
        ("tool:probe.read", "allow"),
        ("tool:probe.write", "allow"),
        ("tool:probe.other", "deny"),
    ]:
        event = tool_events[subject]
        decision = await world.decision(event.policy_decision_id)
        assert decision is not None, subject
        name = subject.removeprefix("tool:")
        assert (decision.action, decision.resource, decision.run_id, decision.decision) == (
            "tool.call",
            f'Tool::"{name}"',
            run_id,
            verdict,
        )
    # Refused by the contract before any policy was asked: audited, with no decision to cite.
    ghost = tool_events["tool:probe.ghost"]
    assert (ghost.outcome, ghost.details["error_type"]) == ("denied", "tool_not_allowed")
    assert ghost.policy_decision_id is None
    models = await world.decisions(run_id=run_id, action="model.call")
    assert models and {d.decision for d in models} == {"allow"}


async def test_10_denied_invoke_leaves_a_decision_and_an_audit_event(world: World) -> None:
    cedar = (
        '@id("no-mallory")\n@reason("Mallory may not invoke agents.")\n'
        'forbid (principal == User::"user:mallory", action == Action::"agent.invoke", resource);'
    )
    await world.apply(agent_document(), policy_document("no-mallory", cedar))

    response = await post_run(world, stage="dev", headers={"X-Corral-Principal": "user:mallory"})
    assert (response.status_code, response.json()["code"]) == (403, "policy_denied")
    assert "no-mallory" in response.json()["message"]
    with pytest.raises(PolicyRefused) as refused:  # the same refusal, without the API
        await start_run(
            world.platform.store,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Probe things.",
            requested_by="user:mallory",
            requester_roles=("builder",),
            governance=world.platform.governance,
            quotas=world.platform.quotas,
        )
    assert await count_rows(world, RunRow) == 0

    decisions = await world.decisions(action="agent.invoke", principal='User::"user:mallory"')
    assert [(d.decision, d.determining_policies) for d in decisions] == [
        ("deny", ["no-mallory"]),
        ("deny", ["no-mallory"]),
    ]
    events = await world.events(action="agent.invoke")
    assert [(e.actor, e.outcome, e.subject) for e in events] == [
        ("user:mallory", "denied", "agent:repo-analyst")
    ] * 2
    assert [e.policy_decision_id for e in events] == [d.id for d in decisions]
    assert refused.value.decision_id == decisions[1].id

    allowed = await post_run(world, stage="dev", headers={"X-Corral-Principal": "user:alice"})
    assert allowed.status_code == 201


# --- Policy documents are validated whole at apply ------------------------------------------------


@pytest.mark.parametrize(
    ("cedar", "named"),
    [
        ('@id("broken")\nforbid (principal, action, resource) when { context.stage == };', "bad"),
        (
            '@id("unknown-attr")\nforbid (principal, action == Action::"tool.call", resource)\n'
            'when { resource.colour == "red" };',
            "unknown-attr",
        ),
        ('@id("tenant-boundary")\npermit (principal, action, resource);', "tenant-boundary"),
        ('@id("odd")\n@decision("require_approval")\npermit (principal, action, resource);', "odd"),
    ],
    ids=["syntax", "unknown-attribute", "default-id-reused", "approval-on-permit"],
)
async def test_invalid_policy_is_refused_whole_and_writes_nothing(
    world: World, cedar: str, named: str
) -> None:
    await world.apply(agent_document())
    tables = (PolicyRow, PolicyVersionRow, AgentRow, AuditEventRow)
    before = [await count_rows(world, table) for table in tables]

    documents = [agent_document("newcomer"), policy_document("bad", cedar)]
    response = await world.client.post("/v1/apply", json={"documents": documents})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_contract"
    assert named in body["message"]
    assert {issue["file"] for issue in body["issues"]} == {"bad@0.1.0"}

    assert [await count_rows(world, table) for table in tables] == before
    assert (await world.client.get("/v1/policies")).json()["items"] == []


# --- 11 Every production agent version has an eval baseline -------------------------------------


async def test_11_no_version_reaches_production_without_a_passing_eval_of_its_digest(
    world: World,
) -> None:
    gate = {"suites": [{"suite": "qa"}]}
    applied = await world.client.post(
        "/v1/apply",
        json={"documents": [agent_document(), agent_document("gated", evaluation=gate)]},
    )
    assert applied.status_code == 200, applied.text
    for agent, code in [("repo-analyst", "eval_baseline_missing"), ("gated", "eval_gate_failed")]:
        for stage in ("production", "staging"):
            refused = await world.client.post(
                f"/v1/agents/{agent}/promotions", json={"version": "0.1.0", "stage": stage}
            )
            if agent == "repo-analyst" and stage == "staging":
                assert refused.status_code == 201, refused.text  # no gate: staging is open
                continue
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == code
            assert "corral eval run" in refused.json()["message"]
    async with world.platform.store.read("default") as session:
        promoted = await session.scalars(
            select(AuditEventRow.subject).where(AuditEventRow.action == "agent.promoted")
        )
        assert list(promoted) == ["agent:repo-analyst@0.1.0"]


# --- 15 The audit chain verifies end to end -------------------------------------------------------


async def busy_day(world: World) -> None:
    """Applies, runs, denials, kill switches and cancels, through the API where there is one."""
    client, store = world.client, world.platform.store
    probes = {"allowed": ["probe.*"]}
    documents = [
        agent_document(tools=probes),
        agent_document("careful", tools={"allowed": ["probe.destroy"]}),
        guardrails(),
    ]
    assert (await client.post("/v1/apply", json={"documents": documents})).status_code == 200
    await world.apply(agent_document(tools=probes, instructions="Version two."))
    await world.execute([call("probe.read"), call("probe.write", n=1)])
    await world.execute(call("probe.destroy"))  # denied by policy
    paused = await world.execute(call("probe.destroy"), agent="careful")
    assert (await world.run(paused)).status == "AWAITING_APPROVAL"
    await cancel_run(store, paused, tenant_id="default", actor="user:test")
    mallory = {"X-Corral-Principal": "user:mallory"}
    cedar = (
        'forbid (principal == User::"user:mallory", action == Action::"agent.invoke", resource);'
    )
    applied = await client.post(
        "/v1/apply", json={"documents": [policy_document("no-mallory", cedar)]}
    )
    assert applied.status_code == 200
    assert (await post_run(world, stage="dev", headers=mallory)).status_code == 403
    switch = {"scope": "agent", "target": "repo-analyst", "reason": "incident"}
    assert (await client.post("/v1/kill-switches", json=switch)).status_code == 201
    assert (await post_run(world, stage="dev")).status_code == 423
    release = {"scope": "agent", "target": "repo-analyst"}
    assert (await client.post("/v1/kill-switches/release", json=release)).status_code == 200
    platform_switch = {"scope": "platform", "reason": "drill"}
    assert (await client.post("/v1/kill-switches", json=platform_switch)).status_code == 201
    release = {"scope": "platform"}
    assert (await client.post("/v1/kill-switches/release", json=release)).status_code == 200
    queued = (await post_run(world, stage="dev")).json()["id"]
    assert (await client.post(f"/v1/runs/{queued}/cancel")).json()["status"] == "CANCELLED"


async def test_15_audit_chain_verifies_after_a_busy_day_and_catches_tampering(
    world: World,
) -> None:
    await busy_day(world)
    client = world.client
    events = await world.events()
    actions = {e.action for e in events}
    for expected in (
        "agent.created",
        "policy.created",
        "run.created",
        "tool.call",
        "approval.requested",
        "agent.invoke",
        "kill_switch.engaged",
        "kill_switch.released",
        "run.finished",
    ):
        assert expected in actions, expected

    verified = (await client.get("/v1/audit/verify")).json()
    assert (verified["ok"], verified["tenant_id"], verified["events_checked"]) == (
        True,
        "default",
        len(events),
    )
    platform = (await client.get("/v1/audit/verify", params={"tenant": "*"})).json()
    assert (platform["ok"], platform["events_checked"]) == (True, 2)
    # The local admin is a platform admin: it may read any tenant's chain, if there is one.
    foreign = await client.get("/v1/audit/verify", params={"tenant": "acme"})
    assert (foreign.status_code, foreign.json()["code"]) == (404, "tenant_not_found")

    victim = next(e for e in events if e.action == "tool.call" and e.outcome == "denied")
    await world.tamper("default", victim.seq, outcome="completed")
    broken = (await client.get("/v1/audit/verify")).json()
    assert (broken["ok"], broken["first_bad_seq"]) == (False, victim.seq)

    await world.tamper("*", 1, details={"reason": "nothing happened"})
    broken = (await client.get("/v1/audit/verify", params={"tenant": "*"})).json()
    assert (broken["ok"], broken["first_bad_seq"]) == (False, 1)
