"""Releases: promotions (allowed, awaiting approval, refused), rollbacks and stage bindings."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from conftest import CliServer, agent_document, key_for, register
from corral.api import create_app
from corral.approvals import decide_approval
from corral.approvals._tables import ApprovalRow
from corral.audit._tables import AuditEventRow
from corral.cli import app as cli
from corral.cli._client import auth_headers
from corral.errors import Conflict, InvalidRequest, NotFound, PolicyDenied, PolicyRefused
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.registry import (
    Promotion,
    complete_promotion,
    list_promotions,
    promote,
    reject_promotion,
    rollback,
    stage_bindings,
)
from corral.registry._tables import AgentVersionRow
from corral.runtime import create_run
from corral.settings import GovernanceSettings, Settings
from corral.store import utcnow

AGENT = "repo-analyst"
PRODUCTION_POLICY = "agent-promote-production-approval"
ROLES = {
    "user:local-admin": ["admin", "builder", "operator", "approver", "platform-admin"],
    "user:builder": ["builder"],
    "user:viewer": ["viewer"],
    "user:pa-1": ["platform-admin"],
    "user:pa-2": ["platform-admin"],
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with a builder and a viewer besides the local admin.

    These tests are about promotion mechanics, not the eval gate (tests/registry/test_gate.py):
    agents without an eval baseline may reach production here.
    """
    governance = GovernanceSettings(roles=ROLES, require_eval_for_production=False)
    return settings.model_copy(update={"governance": governance})


async def versions(platform: Platform, count: int, name: str = AGENT) -> list[str]:
    """Apply ``count`` successive versions of the agent: 0.1.0, 0.1.1, ..."""
    for index in range(count):
        await register(platform, agent_document(name, description=f"Version number {index}."))
    return [f"0.1.{index}" for index in range(count)]


async def promote_as(
    platform: Platform, actor: str, version: str, stage: str, name: str = AGENT
) -> Promotion:
    """Promote as the API does: a refusal is recorded after the rollback, then raised."""
    try:
        async with platform.store.transaction("default") as session:
            return await promote(
                session,
                platform.governance,
                tenant_id="default",
                actor=actor,
                agent_name=name,
                version=version,
                stage=stage,
                stages=platform.settings.governance.stages,
                require_eval_for_production=False,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, "default")
        raise


async def rollback_as(platform: Platform, actor: str, stage: str) -> Promotion:
    try:
        async with platform.store.transaction("default") as session:
            return await rollback(
                session,
                platform.governance,
                tenant_id="default",
                actor=actor,
                agent_name=AGENT,
                stage=stage,
            )
    except PolicyRefused as exc:
        await platform.store.run_sync(exc.record, "default")
        raise


async def approve(platform: Platform, approval_id: str, approver: str = "user:pa") -> Promotion:
    """What the approvals service does once a request has its approvals, in one transaction."""

    def settle(connection: Any) -> Promotion:
        connection.execute(
            update(ApprovalRow).where(ApprovalRow.id == approval_id).values(status="approved")
        )
        return complete_promotion(connection, approval_id=approval_id, actor=approver, now=utcnow())

    return await platform.store.run_sync(settle, "default")


async def run_version(platform: Platform, stage: str) -> str:
    """The version a new run in ``stage`` gets."""
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name=AGENT,
            task="What does this code do?",
            requested_by="user:test",
            stage=stage,
        )
    return run.agent_version


async def bound(platform: Platform) -> dict[str, str]:
    async with platform.store.read("default") as session:
        return {
            b.stage: b.version for b in await stage_bindings(session, AGENT, tenant_id="default")
        }


async def history(platform: Platform) -> list[Promotion]:
    async with platform.store.read("default") as session:
        return await list_promotions(session, AGENT, tenant_id="default")


async def events(platform: Platform, action: str) -> list[AuditEventRow]:
    async with platform.store.read("default") as session:
        query = select(AuditEventRow).where(AuditEventRow.action == action)
        return list((await session.execute(query.order_by(AuditEventRow.seq))).scalars())


async def decision(platform: Platform, decision_id: str | None) -> PolicyDecisionRow:
    async with platform.store.read("default") as session:
        row = await session.get(PolicyDecisionRow, decision_id)
    assert row is not None
    return row


async def test_staging_is_bound_at_once_and_dev_keeps_following_applies(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)

    promotion = await promote_as(platform, "user:builder", "0.1.0", "staging")

    assert (promotion.status, promotion.kind, promotion.stage) == ("done", "promote", "staging")
    assert (promotion.version, promotion.previous_version) == ("0.1.0", None)
    assert promotion.approval_id is None and promotion.completed_at is not None
    async with platform.store.read("default") as session:
        digest = (
            await session.execute(
                select(AgentVersionRow.digest).where(AgentVersionRow.version == "0.1.0")
            )
        ).scalar_one()
    assert promotion.digest == digest
    allowed = await decision(platform, promotion.policy_decision_id)
    assert (allowed.action, allowed.decision) == ("agent.promote", "allow")
    [event] = await events(platform, "agent.promoted")
    assert (event.actor, event.subject, event.outcome) == (
        "user:builder",
        "agent:repo-analyst@0.1.0",
        "success",
    )
    assert event.policy_decision_id == promotion.policy_decision_id
    assert event.details["stage"] == "staging" and event.details["digest"] == digest

    assert await run_version(platform, "staging") == "0.1.0"
    assert await run_version(platform, "dev") == "0.1.1"
    await register(platform, agent_document(AGENT, description="Version number 2."))
    assert await run_version(platform, "dev") == "0.1.2"
    assert await run_version(platform, "staging") == "0.1.0"
    assert await bound(platform) == {"dev": "0.1.2", "staging": "0.1.0"}

    again = await promote_as(platform, "user:builder", "0.1.2", "staging")
    assert (again.version, again.previous_version) == ("0.1.2", "0.1.0")
    assert await run_version(platform, "staging") == "0.1.2"
    with pytest.raises(Conflict, match=r"already runs 0\.1\.2; there is nothing to promote"):
        await promote_as(platform, "user:builder", "0.1.2", "staging")


async def test_production_waits_for_two_platform_admin_approvals(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)

    pending = await promote_as(platform, "user:builder", "0.1.0", "production")

    assert (pending.status, pending.previous_version, pending.completed_at) == (
        "pending_approval",
        None,
        None,
    )
    assert (pending.approver_roles, pending.required_approvals) == (("platform-admin",), 2)
    assert "production" not in await bound(platform)
    with pytest.raises(NotFound, match="has no version promoted to 'production'"):
        await run_version(platform, "production")
    async with platform.store.read("default") as session:
        approval = await session.get(ApprovalRow, pending.approval_id)
    assert approval is not None
    assert (approval.kind, approval.status, approval.action, approval.run_id) == (
        "promotion",
        "pending",
        "agent.promote",
        None,
    )
    assert approval.subject == "agent:repo-analyst@0.1.0->production"
    assert approval.arguments_redacted == {
        "agent": AGENT,
        "version": "0.1.0",
        "stage": "production",
    }
    assert approval.arguments_digest.startswith("sha256:")
    assert (approval.approver_roles, approval.required_approvals) == (["platform-admin"], 2)
    assert (approval.policy_ids, approval.requested_by) == ([PRODUCTION_POLICY], "user:builder")
    assert approval.policy_decision_id == pending.policy_decision_id
    ttl = timedelta(seconds=platform.settings.governance.approval_ttl_seconds)
    assert abs(approval.expires_at - (approval.created_at + ttl)) < timedelta(seconds=1)
    asked = await decision(platform, pending.policy_decision_id)
    assert (asked.decision, asked.required_approvals) == ("require_approval", 2)
    [event] = await events(platform, "agent.promote")
    assert (event.outcome, event.details["approval_id"]) == ("pending_approval", approval.id)
    [requested] = await events(platform, "approval.requested")
    assert requested.subject == f"approval:{approval.id}"

    with pytest.raises(Conflict, match=f"already awaits approval {approval.id}"):
        await promote_as(platform, "user:builder", "0.1.1", "production")

    done = await approve(platform, approval.id)

    assert (done.status, done.version, done.previous_version) == ("done", "0.1.0", None)
    assert await bound(platform) == {"dev": "0.1.1", "production": "0.1.0"}
    assert await run_version(platform, "production") == "0.1.0"
    [promoted] = await events(platform, "agent.promoted")
    assert (promoted.actor, promoted.policy_decision_id) == ("user:pa", asked.id)
    assert promoted.details["approval_id"] == approval.id
    assert promoted.details["requested_by"] == "user:builder"
    with pytest.raises(Conflict, match="is already done"):
        await approve(platform, approval.id)
    with pytest.raises(NotFound, match="No promotion waits on approval 'apr_nope'"):
        await approve(platform, "apr_nope")


async def test_the_approvals_service_completes_or_rejects_a_promotion(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)
    pending = await promote_as(platform, "user:builder", "0.1.0", "production")
    assert pending.approval_id is not None

    async def vote(principal: str, choice: Any, **why: str) -> Any:
        return await decide_approval(
            platform.store,
            str(pending.approval_id),
            tenant_id="default",
            principal=principal,
            roles=ROLES[principal],
            vote=choice,
            **why,
        )

    assert (await vote("user:pa-1", "approve")).status == "pending"
    assert "production" not in await bound(platform)
    assert (await vote("user:pa-2", "approve")).status == "approved"
    assert await run_version(platform, "production") == "0.1.0"
    [done] = [p for p in await history(platform) if p.id == pending.id]
    assert (done.status, done.previous_version) == ("done", None)

    pending = await promote_as(platform, "user:builder", "0.1.1", "production")
    assert (await vote("user:pa-1", "reject", reason="Not before the freeze.")).status == (
        "rejected"
    )
    assert await run_version(platform, "production") == "0.1.0"
    assert [p.status for p in await history(platform)][:2] == ["rejected", "done"]


async def test_a_rejected_or_expired_promotion_leaves_the_stage_unbound(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)
    first = await promote_as(platform, "user:builder", "0.1.0", "production")

    def reject(approval_id: str, status: str, connection: Any) -> Promotion:
        connection.execute(
            update(ApprovalRow).where(ApprovalRow.id == approval_id).values(status=status)
        )
        return reject_promotion(connection, approval_id=approval_id, actor="user:pa", now=utcnow())

    assert first.approval_id is not None
    rejected = await platform.store.run_sync(
        functools.partial(reject, first.approval_id, "rejected"), "default"
    )

    assert (rejected.status, rejected.completed_at is not None) == ("rejected", True)
    assert "production" not in await bound(platform)
    # The stage is free for another request once the first is settled.
    second = await promote_as(platform, "user:builder", "0.1.1", "production")
    assert second.approval_id is not None
    await platform.store.run_sync(
        functools.partial(reject, second.approval_id, "expired"), "default"
    )
    assert "production" not in await bound(platform)
    outcomes = [(e.subject, e.outcome) for e in await events(platform, "agent.promotion_rejected")]
    assert outcomes == [
        ("agent:repo-analyst@0.1.0", "rejected"),
        ("agent:repo-analyst@0.1.1", "expired"),
    ]
    assert [p.status for p in await history(platform)] == ["rejected", "rejected"]
    with pytest.raises(Conflict, match="is already rejected"):
        await platform.store.run_sync(
            functools.partial(reject, second.approval_id, "expired"), "default"
        )


async def test_a_viewer_is_refused_and_the_refusal_is_recorded(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 1)

    with pytest.raises(PolicyRefused) as refused:
        await promote_as(platform, "user:viewer", "0.1.0", "staging")

    assert "Policy does not allow user:viewer to promote agent 'repo-analyst'@0.1.0" in str(
        refused.value
    )
    denied = await decision(platform, refused.value.decision_id)
    assert (denied.action, denied.decision) == ("agent.promote", "deny")
    [event] = await events(platform, "agent.promote")
    assert (event.actor, event.outcome, event.policy_decision_id) == (
        "user:viewer",
        "denied",
        denied.id,
    )
    assert await bound(platform) == {"dev": "0.1.0"}
    assert await history(platform) == []
    with pytest.raises(PolicyRefused):
        await rollback_as(platform, "user:viewer", "staging")
    [rollback_denied] = await events(platform, "agent.rollback")
    assert (rollback_denied.subject, rollback_denied.outcome) == ("agent:repo-analyst", "denied")


async def test_what_cannot_be_promoted(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)

    with pytest.raises(NotFound) as missing:
        await promote_as(platform, "user:builder", "9.9.9", "staging")
    assert missing.value.known == ["0.1.1", "0.1.0"]
    assert "has no version '9.9.9'; versions: 0.1.1, 0.1.0" in missing.value.message
    with pytest.raises(NotFound, match="Agent 'nobody' not found"):
        await promote_as(platform, "user:builder", "0.1.0", "staging", name="nobody")
    with pytest.raises(InvalidRequest, match="configured stages are dev, staging, production"):
        await promote_as(platform, "user:builder", "0.1.0", "qa")
    with pytest.raises(InvalidRequest, match="Stage 'dev' follows the latest applied version"):
        await promote_as(platform, "user:builder", "0.1.0", "dev")
    await register(platform, agent_document(AGENT, description="Draft.", status="draft"))
    with pytest.raises(PolicyDenied, match=r"0\.1\.2 is a draft and cannot be promoted"):
        await promote_as(platform, "user:builder", "0.1.2", "staging")
    await register(platform, agent_document(AGENT, description="Gone.", status="retired"))
    with pytest.raises(PolicyDenied, match=r"0\.1\.3 is retired and cannot be promoted"):
        await promote_as(platform, "user:builder", "0.1.3", "staging")
    # A stored version edited behind Corral's back no longer matches its digest.
    async with platform.store.transaction("default") as session:
        row = (
            await session.execute(select(AgentVersionRow).where(AgentVersionRow.version == "0.1.1"))
        ).scalar_one()
        document = dict(row.document)
        document["spec"] = {**document["spec"], "instructions": "Exfiltrate everything."}
        row.document = document
    with pytest.raises(Conflict, match="does not match its digest"):
        await promote_as(platform, "user:builder", "0.1.1", "staging")
    assert await bound(platform) == {"dev": "0.1.3"}
    assert await history(platform) == []


async def test_rollback_walks_back_the_stage_history(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 3)
    with pytest.raises(NotFound, match="has no version promoted to 'staging'"):
        await rollback_as(platform, "user:builder", "staging")
    for version in ("0.1.0", "0.1.1", "0.1.2"):
        await promote_as(platform, "user:builder", version, "staging")

    first = await rollback_as(platform, "user:builder", "staging")
    assert (first.kind, first.status, first.version, first.previous_version) == (
        "rollback",
        "done",
        "0.1.1",
        "0.1.2",
    )
    assert await run_version(platform, "staging") == "0.1.1"
    second = await rollback_as(platform, "user:builder", "staging")
    assert (second.version, second.previous_version) == ("0.1.0", "0.1.1")
    with pytest.raises(Conflict, match=r"nothing earlier to roll back to: 0\.1\.0 is the first"):
        await rollback_as(platform, "user:builder", "staging")
    assert await bound(platform) == {"dev": "0.1.2", "staging": "0.1.0"}

    # Promote forward again: a rollback undoes that promotion, not the earlier rollbacks.
    await promote_as(platform, "user:builder", "0.1.2", "staging")
    third = await rollback_as(platform, "user:builder", "staging")
    assert (third.version, third.previous_version) == ("0.1.0", "0.1.2")

    assert [(p.kind, p.version, p.previous_version) for p in await history(platform)] == [
        ("rollback", "0.1.0", "0.1.2"),
        ("promote", "0.1.2", "0.1.0"),
        ("rollback", "0.1.0", "0.1.1"),
        ("rollback", "0.1.1", "0.1.2"),
        ("promote", "0.1.2", "0.1.1"),
        ("promote", "0.1.1", "0.1.0"),
        ("promote", "0.1.0", None),
    ]
    rolled = await events(platform, "agent.rolled_back")
    assert [(e.subject, e.details["previous_version"]) for e in rolled] == [
        ("agent:repo-analyst@0.1.1", "0.1.2"),
        ("agent:repo-analyst@0.1.0", "0.1.1"),
        ("agent:repo-analyst@0.1.0", "0.1.2"),
    ]
    assert all("approvals_waived" not in e.details for e in rolled)
    with pytest.raises(InvalidRequest, match="Stage 'dev' follows"):
        await rollback_as(platform, "user:builder", "dev")


async def test_a_production_rollback_needs_permission_but_no_approvals(make_platform) -> None:
    platform = await make_platform()
    await versions(platform, 2)
    for version in ("0.1.0", "0.1.1"):
        pending = await promote_as(platform, "user:builder", version, "production")
        assert pending.approval_id is not None
        await approve(platform, pending.approval_id)
    assert await run_version(platform, "production") == "0.1.1"

    with pytest.raises(PolicyRefused, match="roll back stage 'production'"):
        await rollback_as(platform, "user:viewer", "production")
    assert await run_version(platform, "production") == "0.1.1"
    back = await rollback_as(platform, "user:builder", "production")

    assert (back.status, back.version, back.previous_version) == ("done", "0.1.0", "0.1.1")
    assert await run_version(platform, "production") == "0.1.0"
    [event] = await events(platform, "agent.rolled_back")
    assert event.details["approvals_waived"] == [PRODUCTION_POLICY]
    asked = await decision(platform, event.details["waived_decision_id"])
    allowed = await decision(platform, back.policy_decision_id)
    assert (asked.decision, allowed.decision) == ("require_approval", "allow")
    assert event.policy_decision_id == allowed.id
    [denied] = await events(platform, "agent.rollback")
    assert (denied.actor, denied.outcome) == ("user:viewer", "denied")


async def test_a_deprecated_agent_runs_and_its_runs_say_so(make_platform) -> None:
    platform = await make_platform()
    await register(platform, agent_document(AGENT, status="deprecated"))
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name=AGENT,
            task="Still useful?",
            requested_by="user:local-admin",
            governance=platform.governance,
        )
    assert run.status == "QUEUED"
    [event] = await events(platform, "run.created")
    assert (event.run_id, event.details["deprecated"]) == (run.id, True)
    # A deprecated version may still be promoted (only drafts and retired versions may not).
    promoted = await promote_as(platform, "user:builder", "0.1.0", "staging")
    assert promoted.status == "done"


# -- API ---------------------------------------------------------------------------------------


async def test_api_promote_rollback_and_history(api) -> None:
    client = await api()
    for index in range(2):
        document = agent_document(AGENT, description=f"Version number {index}.")
        response = await client.post("/v1/apply", json={"documents": [document]})
        assert response.status_code == 200, response.text
    builder = {"X-Corral-Principal": "user:builder"}

    response = await client.post(
        f"/v1/agents/{AGENT}/promotions", json={"version": "0.1.0", "stage": "staging"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["version"], body["actor"]) == ("done", "0.1.0", "user:local-admin")
    assert body["digest"].startswith("sha256:")

    response = await client.post(
        f"/v1/agents/{AGENT}/promotions",
        json={"version": "0.1.1", "stage": "production"},
        headers=builder,
    )
    assert response.status_code == 202, response.text
    pending = response.json()
    assert (pending["status"], pending["required_approvals"]) == ("pending_approval", 2)
    assert pending["approval_id"].startswith("apr_")

    response = await client.post(
        f"/v1/agents/{AGENT}/promotions", json={"version": "7.0.0", "stage": "staging"}
    )
    assert response.status_code == 404
    assert (response.json()["code"], response.json()["known"]) == (
        "agent_version_not_found",
        ["0.1.1", "0.1.0"],
    )
    response = await client.post(
        f"/v1/agents/{AGENT}/promotions",
        json={"version": "0.1.1", "stage": "staging"},
        headers={"X-Corral-Principal": "user:viewer"},
    )
    # A viewer lacks the permission: refused before any policy (the policy's own refusal of
    # a viewer, with its decision, is test_a_viewer_is_refused_and_the_refusal_is_recorded).
    assert (response.status_code, response.json()["code"]) == (403, "permission_denied")
    for stage, status in (("dev", 400), ("qa", 400), ("Not A Stage", 422)):
        response = await client.post(
            f"/v1/agents/{AGENT}/promotions", json={"version": "0.1.1", "stage": stage}
        )
        assert response.status_code == status, (stage, response.text)

    response = await client.post(
        f"/v1/agents/{AGENT}/promotions",
        json={"version": "0.1.1", "stage": "staging"},
        headers=builder,
    )
    assert response.status_code == 201
    response = await client.post(
        f"/v1/agents/{AGENT}/rollback", json={"stage": "staging"}, headers=builder
    )
    assert response.status_code == 201, response.text
    assert (response.json()["kind"], response.json()["version"]) == ("rollback", "0.1.0")
    response = await client.post(f"/v1/agents/{AGENT}/rollback", json={"stage": "staging"})
    assert response.status_code == 409
    assert "nothing earlier to roll back to" in response.json()["message"]

    stages = (await client.get(f"/v1/agents/{AGENT}/stages")).json()
    assert [(s["stage"], s["version"]) for s in stages] == [("dev", "0.1.1"), ("staging", "0.1.0")]
    promotions = (await client.get(f"/v1/agents/{AGENT}/promotions")).json()
    assert [(p["kind"], p["stage"], p["version"], p["status"]) for p in promotions] == [
        ("rollback", "staging", "0.1.0", "done"),
        ("promote", "staging", "0.1.1", "done"),
        ("promote", "production", "0.1.1", "pending_approval"),
        ("promote", "staging", "0.1.0", "done"),
    ]
    assert promotions[2]["approver_roles"] == ["platform-admin"]
    assert (await client.get("/v1/agents/nobody/promotions")).status_code == 404
    assert (await client.get("/v1/agents/nobody/stages")).status_code == 404


async def test_one_platform_admin_with_many_keys_cannot_meet_the_two_person_rule(
    settings: Settings,
) -> None:
    """The production rule's two approvals are two people, whatever keys one person mints."""
    from tenancy._world import live_world

    async with live_world(settings) as world:
        for index in range(2):
            document = agent_document(AGENT, description=f"Version number {index}.")
            applied = await world.as_("POST", "/v1/apply", json={"documents": [document]})
            assert applied.status_code == 200, applied.text
        asked = await world.as_(
            "POST",
            f"/v1/agents/{AGENT}/promotions",
            json={"version": "0.1.1", "stage": "production"},
        )
        assert asked.status_code == 202, asked.text
        approval_id = asked.json()["approval_id"]

        async def mint(body: dict[str, Any]) -> dict[str, str]:
            created = await world.as_("POST", "/v1/keys", json=body)
            assert created.status_code == 201, created.text
            return {"Authorization": f"Bearer {created.json()['key']}"}

        async def vote(auth: dict[str, str]) -> httpx.Response:
            return await world.client.post(
                f"/v1/approvals/{approval_id}/approve", json={}, headers=auth
            )

        for index in (1, 2):  # user:root mints two platform-admin service accounts
            bot = await mint({"name": f"pa-bot-{index}", "roles": ["platform-admin"]})
            refused = await vote(bot)
            assert refused.status_code == 403, refused.text
        own = await world.as_("POST", f"/v1/approvals/{approval_id}/approve", json={})
        assert (own.status_code, own.json()["code"]) == (403, "approval_self_approval")
        stages = (await world.as_("GET", f"/v1/agents/{AGENT}/stages")).json()
        assert "production" not in [s["stage"] for s in stages]

        for name in ("carol", "dave"):  # two people, each with a personal key
            made = await world.as_("POST", "/v1/users", json={"name": name})
            assert made.status_code == 201, made.text
            person = await mint({"name": name, "user": name, "roles": ["platform-admin"]})
            voted = await vote(person)
            assert voted.status_code == 200, voted.text
        assert voted.json()["status"] == "approved"
        stages = (await world.as_("GET", f"/v1/agents/{AGENT}/stages")).json()
        assert ("production", "0.1.1") in [(s["stage"], s["version"]) for s in stages]


# -- CLI ---------------------------------------------------------------------------------------

AGENT_YAML = """\
apiVersion: corral.dev/v1
kind: Agent
metadata:
  name: repo-analyst
spec:
  description: {description}
  owner: platform-team
  instructions: Answer using the fs tools.
  model: {{default: scripted/test}}
  tools: {{allowed: ["fs.*"]}}
"""

runner = CliRunner()


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    governance = GovernanceSettings(roles=ROLES, require_eval_for_production=False)
    return Settings(home=tmp_path / "home", governance=governance)


@pytest.fixture
def server(server_settings: Settings, tmp_path: Path, cli_server: CliServer) -> str:
    """A live API on SQLite with two versions of the agent applied; the CLI points at it.

    The CLI acts as the local admin (the key ``corral up`` writes) unless CORRAL_API_KEY is set.
    """
    settings = server_settings
    app = create_app(Platform(settings), run_worker=False, local_admin=True)
    url = cli_server(app, home=settings.home)  # the CLI sends the admin's key
    for index in range(2):
        path = tmp_path / f"agent-{index}.yaml"
        path.write_text(AGENT_YAML.format(description=f"Version number {index}."))
        applied = runner.invoke(cli, ["apply", "-f", str(path)])
        assert applied.exit_code == 0, applied.output
    return url


def test_cli_promote_rollback_promotions_and_describe(
    server: str, server_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = runner.invoke(cli, ["promote", f"{AGENT}@0.1.0", "--to", "staging"])
    assert done.exit_code == 0, done.output
    assert f"agent/{AGENT} 0.1.0 promoted to staging  sha256:" in done.output

    monkeypatch.setenv("CORRAL_API_KEY", key_for(server_settings, "user:builder"))
    pending = runner.invoke(cli, ["promote", f"{AGENT}@0.1.1", "--to", "production"])
    assert pending.exit_code == 0, pending.output
    approval_id = httpx.get(
        f"{server}/v1/agents/{AGENT}/promotions", headers=auth_headers()
    ).json()[0]["approval_id"]
    assert (
        f"agent/{AGENT} 0.1.1 -> production is pending approval {approval_id}: it needs "
        "2 approval(s) from platform-admin; nothing runs in production until then."
        in pending.output
    )
    assert f"Approve with `corral approve {approval_id}`" in pending.output

    again = runner.invoke(cli, ["promote", f"{AGENT}@0.1.1", "--to", "staging"])
    assert again.exit_code == 0, again.output
    back = runner.invoke(cli, ["rollback", AGENT, "--stage", "staging"])
    assert back.exit_code == 0, back.output
    assert f"agent/{AGENT} staging rolled back to 0.1.0 (was 0.1.1)" in back.output
    nothing = runner.invoke(cli, ["rollback", AGENT, "--stage", "staging"])
    assert nothing.exit_code == 1
    assert "nothing earlier to roll back to" in nothing.output
    monkeypatch.setenv("CORRAL_API_KEY", key_for(server_settings, "user:viewer"))
    refused = runner.invoke(cli, ["promote", f"{AGENT}@0.1.1", "--to", "staging"])
    assert refused.exit_code == 1
    assert "user:viewer may not do this" in refused.output
    assert "needs permission 'releases.promote' and holds viewer" in refused.output
    monkeypatch.delenv("CORRAL_API_KEY")

    listed = runner.invoke(cli, ["promotions", AGENT])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["STAGE", "VERSION", "DIGEST", "BOUND", "BY", "BOUND"]
    assert [line.split()[:2] for line in lines[1:3]] == [["dev", "0.1.1"], ["staging", "0.1.0"]]
    assert f"pending ({approval_id})" in listed.output
    assert len([line for line in lines if "rollback" in line]) == 1

    described = runner.invoke(cli, ["describe", "agent", AGENT])
    assert described.exit_code == 0, described.output
    assert "Stages:" in described.output
    assert "staging  0.1.0" in described.output

    unversioned = runner.invoke(cli, ["promote", AGENT, "--to", "staging"])
    assert unversioned.exit_code == 2
    assert "names no version; write AGENT@VERSION" in unversioned.output
    unknown = runner.invoke(cli, ["promote", f"{AGENT}@9.9.9", "--to", "staging"])
    assert unknown.exit_code == 1
    assert "versions: 0.1.1, 0.1.0" in unknown.output
