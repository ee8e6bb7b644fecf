"""Approvals count accountable humans, not keys (DESIGN.md, "Tenancy and identity").

The attack: an admin mints two service-account keys holding the approver role and approves
their own run twice. Minted keys used to count as two distinct people and as someone other
than the requester. Here they count as the admin, and a service account votes only where a
policy explicitly lets it (Cedar ``approval.decide``). Two distinct local users, each with a
personal key, are two people. Real keys, real API, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from conftest import agent_document
from corral.approvals._tables import ApprovalVoteRow
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.settings import Settings
from corral.testing import ScriptedModel
from tenancy._world import World, live_world

TWO_APPROVERS = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "listing-four-eyes"},
    "spec": {
        "description": "Listing a directory needs two approvers.",
        "cedar": """
@id("listing-two-approvers")
@decision("require_approval")
@approver_role("approver")
@required_approvals("2")
@reason("Listing a directory needs two approvers.")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.list_dir");
""",
    },
}

SERVICE_VOTES = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "bots-may-vote"},
    "spec": {
        "description": "The two release bots may vote on listings.",
        "cedar": """
@id("bots-may-vote")
permit (
  principal is ServiceAccount,
  action == Action::"approval.decide",
  resource == Tool::"fs.list_dir"
)
when {
  principal == ServiceAccount::"service:bot-1" ||
  principal == ServiceAccount::"service:bot-2"
};
""",
    },
}


def list_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("listed")
    return ToolCall("call_0", "fs.list_dir", {"path": "."})


async def until_status(world: World, run_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        run: dict[str, Any] = (await world.as_("GET", f"/v1/runs/{run_id}")).json()
        if run["status"] == status:
            return run
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        await asyncio.sleep(0.02)


async def paused_run(world: World, workspace: Any, *policies: dict[str, Any]) -> str:
    """Apply the agent and ``policies`` as ``user:root``; start a run as root; its approval id."""
    documents = [agent_document(), TWO_APPROVERS, *policies]
    applied = await world.as_("POST", "/v1/apply", json={"documents": documents})
    assert applied.status_code == 200, applied.text
    created = await world.as_(
        "POST",
        "/v1/agents/repo-analyst/runs",
        json={"task": "What is here?", "workspace": str(workspace), "stage": "dev"},
    )
    assert created.status_code == 201, created.text
    run_id: str = created.json()["id"]
    await until_status(world, run_id, "AWAITING_APPROVAL")
    listed = await world.as_("GET", "/v1/approvals", params={"run_id": run_id})
    [approval] = listed.json()["items"]
    return str(approval["id"])


async def mint(world: World, body: dict[str, Any]) -> dict[str, str]:
    """A key created through the API by ``user:root``; its Authorization header."""
    created = await world.as_("POST", "/v1/keys", json=body)
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


async def approve(world: World, approval_id: str, auth: dict[str, str]) -> Any:
    return await world.client.post(
        f"/v1/approvals/{approval_id}/approve", json={"comment": "ok"}, headers=auth
    )


async def test_two_minted_service_keys_do_not_approve_their_creators_run(
    settings: Settings, workspace: Any
) -> None:
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        approval_id = await paused_run(world, workspace)
        bots = [await mint(world, {"name": f"bot-{n}", "roles": ["approver"]}) for n in (1, 2)]

        for auth in bots:
            voted = await approve(world, approval_id, auth)
            assert voted.status_code == 403, voted.text
            assert voted.json()["code"] == "approval_service_vote"
            assert "approval.decide" in voted.json()["message"]

        shown = (await world.as_("GET", f"/v1/approvals/{approval_id}")).json()
        assert (shown["status"], shown["received_approvals"], shown["votes"]) == (
            "pending",
            0,
            [],
        )
        assert shown["run_status"] == "AWAITING_APPROVAL"


async def test_service_votes_allowed_by_policy_still_count_as_their_creator(
    settings: Settings, workspace: Any
) -> None:
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        approval_id = await paused_run(world, workspace, SERVICE_VOTES)
        bot_1, bot_2 = [
            await mint(world, {"name": f"bot-{n}", "roles": ["approver"]}) for n in (1, 2)
        ]
        # Both bots act for user:root, who requested the run: self-approval.
        for auth in (bot_1, bot_2):
            voted = await approve(world, approval_id, auth)
            assert voted.status_code == 403, voted.text
            assert voted.json()["code"] == "approval_self_approval"
            assert "acting for user:root" in voted.json()["message"]

        # On another requester's run, the bots may vote, but both together are one person.
        other = await world.headers("default", "service:ci", ["builder", "approver"])
        created = await world.client.post(
            "/v1/agents/repo-analyst/runs",
            json={"task": "What is here?", "workspace": str(workspace), "stage": "dev"},
            headers=other,
        )
        run_id = created.json()["id"]
        await until_status(world, run_id, "AWAITING_APPROVAL")
        listed = await world.as_("GET", "/v1/approvals", params={"run_id": run_id})
        second = listed.json()["items"][0]["id"]
        first = await approve(world, second, bot_1)
        assert first.status_code == 200, first.text
        assert (first.json()["status"], first.json()["received_approvals"]) == ("pending", 1)
        [vote] = first.json()["votes"]
        assert (vote["principal"], vote["accountable"]) == ("service:bot-1", "user:root")
        again = await approve(world, second, bot_2)
        assert again.status_code == 409, again.text
        assert "user:root already voted 'approve'" in again.json()["message"]
        # Nor may root vote in person on top of the bot's vote.
        in_person = await world.as_("POST", f"/v1/approvals/{second}/approve", json={})
        assert in_person.status_code == 409
        shown = (await world.as_("GET", f"/v1/approvals/{second}")).json()
        assert (shown["status"], shown["received_approvals"]) == ("pending", 1)
        # The decision that let the bot vote is stored and named in the audit event.
        events = (await world.as_("GET", "/v1/audit/events", params={"limit": 500})).json()
        [bot_vote] = [
            e
            for e in events["items"]
            if e["action"] == "approval.vote" and e["actor"] == "service:bot-1"
        ]
        assert bot_vote["details"]["accountable"] == "user:root"
        assert bot_vote["details"]["service_vote_decision_id"]


async def test_two_distinct_local_users_approve(settings: Settings, workspace: Any) -> None:
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        approval_id = await paused_run(world, workspace)
        people = []
        for name in ("alice", "bob"):
            made = await world.as_("POST", "/v1/users", json={"name": name})
            assert made.status_code == 201, made.text
            people.append(await mint(world, {"name": name, "user": name, "roles": ["approver"]}))

        first = await approve(world, approval_id, people[0])
        assert first.status_code == 200, first.text
        assert first.json()["received_approvals"] == 1
        second = await approve(world, approval_id, people[1])
        assert second.status_code == 200, second.text
        assert (second.json()["status"], second.json()["received_approvals"]) == ("approved", 2)
        assert [(v["principal"], v["accountable"]) for v in second.json()["votes"]] == [
            ("user:alice", "user:alice"),
            ("user:bob", "user:bob"),
        ]
        run = await until_status(world, second.json()["run_id"], "SUCCEEDED")
        assert run["output"] == "listed"
        async with world.platform.store.read("default") as session:
            stored = list(
                await session.scalars(
                    select(ApprovalVoteRow.accountable).where(
                        ApprovalVoteRow.approval_id == approval_id
                    )
                )
            )
        assert sorted(stored) == ["user:alice", "user:bob"]


async def test_a_users_second_key_is_still_that_user(settings: Settings, workspace: Any) -> None:
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        approval_id = await paused_run(world, workspace)
        assert (await world.as_("POST", "/v1/users", json={"name": "alice"})).status_code == 201
        keys = [
            await mint(world, {"name": f"alice-{n}", "user": "alice", "roles": ["approver"]})
            for n in (1, 2)
        ]
        assert (await approve(world, approval_id, keys[0])).status_code == 200
        twice = await approve(world, approval_id, keys[1])
        assert twice.status_code == 409, twice.text
        assert "user:alice already voted" in twice.json()["message"]
