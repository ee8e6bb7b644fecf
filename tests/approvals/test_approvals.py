"""Approvals: people deciding the tool calls policy holds for them (DESIGN.md, "Approvals").

Invariant 6 of DESIGN.md ("no irreversible action without approval where policy requires it"),
on SQLite and on PostgreSQL: a ``side_effect: write`` tool called by a run in stage
``production`` pauses the run ``AWAITING_APPROVAL`` (default policy
``tool-write-needs-approval``); approvers decide through the service, the REST API and the CLI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from conftest import agent_document, register
from corral.approvals import (
    Approval,
    decide_approval,
    expire_approvals,
    get_approval,
    list_approvals,
)
from corral.approvals._tables import ApprovalRow, ApprovalVoteRow
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.contracts import Tool
from corral.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools._fs import BuiltinTool
from corral.gateway.tools._gateway import current_tool_call
from corral.observability import REGISTRY, sample_value
from corral.platform import Platform
from corral.policy._service import arguments_digest
from corral.registry import bind_stage, get_agent, get_agent_version
from corral.runtime import cancel_run, create_run, get_run, list_run_spans
from corral.runtime._tables import RunRow, ToolCallRow
from corral.settings import GovernanceSettings, Settings
from corral.store import SYSTEM, utcnow
from corral.testing import ScriptedModel

REQUESTER = "user:alice"
"""Requests the runs; holds the approver role too, and still may not approve her own runs."""

ROLES = {
    "user:local-admin": ["admin", "builder", "operator", "approver", "platform-admin"],
    REQUESTER: ["builder", "approver"],
    "user:bob": ["approver"],
    "user:carol": ["approver"],
    "user:dave": ["viewer"],
}

TWO_APPROVERS_POLICY = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "ledger-four-eyes"},
    "spec": {
        "description": "Ledger writes need two approvers.",
        "cedar": """
@id("ledger-two-approvers")
@decision("require_approval")
@approver_role("approver")
@required_approvals("2")
@reason("Ledger writes need two approvers.")
forbid (principal, action == Action::"tool.call", resource == Tool::"ledger.write");
""",
    },
}


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    """The shared settings with the roles above and no policy caching between processes."""
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


# --- a side-effecting tool ------------------------------------------------------------------------


class Ledger:
    """The world of ``ledger.write`` (``side_effect: write``): every execution is counted."""

    def __init__(self) -> None:
        self.executions: list[tuple[str, int]] = []
        """``(idempotency key, n)`` of every execution."""

    def builtins(self) -> dict[str, BuiltinTool]:
        contract = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": "ledger.write", "version": "1.0.0"},
                "spec": {
                    "description": "Write entry n to the ledger.",
                    "type": "builtin",
                    "side_effect": "write",
                    "input_schema": {
                        "type": "object",
                        "properties": {"n": {"type": "integer"}, "api_token": {"type": "string"}},
                        "required": ["n"],
                        "additionalProperties": False,
                    },
                },
            }
        )
        return {"ledger.write": BuiltinTool(contract, self._write)}

    async def _write(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        self.executions.append((current_tool_call().idempotency_key, arguments["n"]))
        return f"entry {arguments['n']} written"


ARGUMENTS = {"n": 7, "api_token": "s3cret"}


def write_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    """Write entry 7 once, then answer with what the tool said."""
    results = [m.content for m in request.messages if m.role == "tool"]
    if not results:
        return ToolCall("call_0", "ledger.write", dict(ARGUMENTS))
    return FinalAnswer(f"done: {results[-1]}")


# --- platforms, runs and what they stored ---------------------------------------------------------

Governed = Callable[..., Awaitable[Platform]]


@pytest.fixture
async def governed(settings: Settings) -> AsyncIterator[Governed]:
    """``await governed(ledger)``: a started platform whose agent runs in stage ``production``.

    The agent ``repo-analyst`` may call ``ledger.write``; its latest version is bound to
    ``production``. No worker loop runs: tests drive runs with ``worker.run_until_idle()``.
    """
    started: list[Platform] = []

    async def make(ledger: Ledger, *policies: dict[str, Any], **governance: Any) -> Platform:
        custom = settings.model_copy(
            update={"governance": settings.governance.model_copy(update=governance)}
        )
        platform = Platform(
            custom,
            providers={"scripted": ScriptedModel(write_then_answer)},
            builtins=ledger.builtins(),
        )
        await platform.start()
        started.append(platform)
        await register(platform, agent_document(tools={"allowed": ["ledger.*"]}), *policies)
        async with platform.store.transaction("default") as session:
            agent = await get_agent(session, "repo-analyst", tenant_id="default")
            _, version = await get_agent_version(
                session, "repo-analyst", agent.latest_version, tenant_id="default"
            )
            await bind_stage(
                session, agent, version, "production", actor="user:test", tenant_id="default"
            )
        return platform

    yield make
    for platform in started:
        await platform.close()


async def paused_run(platform: Platform) -> tuple[str, Approval]:
    """Start a production run as the requester; drive it to its approval request."""
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Write entry 7.",
            requested_by=REQUESTER,
            stage="production",
            governance=platform.governance,
        )
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run.id)).status == "AWAITING_APPROVAL"
    pending = await list_approvals(
        platform.store, tenant_id="default", status="pending", run_id=run.id
    )
    assert len(pending) == 1
    return run.id, pending[0]


def approval_waits() -> dict[str, float]:
    """``corral_approval_wait_seconds_count`` by outcome (process-wide: compare deltas)."""
    name = "corral_approval_wait_seconds_count"
    return {o: sample_value(name, {"outcome": o}) for o in ("approved", "rejected", "expired")}


def tool_calls(tool: str) -> dict[str, float]:
    """``corral_tool_calls_total`` of ``tool`` by decision, whatever the outcome."""
    counts = dict.fromkeys(("allow", "deny", "require_approval"), 0.0)
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "corral_tool_calls_total" and sample.labels["tool"] == tool:
                counts[sample.labels["decision"]] += sample.value
    return counts


def runs_rejected(reason: str) -> float:
    return sample_value("corral_runs_finished_total", {"status": "REJECTED", "reason": reason})


async def run_of(platform: Platform, run_id: str) -> RunRow:
    async with platform.store.read("default") as session:
        return await get_run(session, run_id, tenant_id="default")


async def vote(
    platform: Platform,
    approval_id: str,
    principal: str,
    how: str = "approve",
    *,
    tenant_id: str = "default",
    **text: str,
) -> Approval:
    return await decide_approval(
        platform.store,
        approval_id,
        tenant_id=tenant_id,
        principal=principal,
        roles=ROLES.get(principal, []),
        vote=how,  # type: ignore[arg-type]
        **text,
    )


async def audit_actions(platform: Platform, run_id: str) -> list[tuple[str, str, str]]:
    async with platform.store.read("default") as session:
        rows = await session.execute(
            select(AuditEventRow.action, AuditEventRow.actor, AuditEventRow.outcome)
            .where(AuditEventRow.run_id == run_id, AuditEventRow.action.like("approval.%"))
            .order_by(AuditEventRow.seq)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def calls_of(platform: Platform, run_id: str) -> list[ToolCallRow]:
    async with platform.store.read("default") as session:
        rows = await session.execute(select(ToolCallRow).where(ToolCallRow.run_id == run_id))
        return list(rows.scalars())


async def chain_ok(platform: Platform) -> None:
    async with platform.store.read("default") as session:
        verification = await verify_chain(session, tenant_id="default")
    assert verification.ok, verification


# --- the service ----------------------------------------------------------------------------------


async def test_a_write_call_waits_for_an_approver_then_runs_exactly_once(
    governed: Governed,
) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    run_id, request = await paused_run(platform)

    assert ledger.executions == []
    run = await run_of(platform, run_id)
    assert run.resume_condition == {"kind": "approval", "approval_id": request.id}
    assert f"corral approve {request.id}" in (run.pause_reason or "")
    assert (request.kind, request.status, request.action, request.tool) == (
        "tool_call",
        "pending",
        "tool.call",
        "ledger.write",
    )
    assert (request.run_id, request.run_status, request.step_index, request.call_index) == (
        run_id,
        "AWAITING_APPROVAL",
        0,
        0,
    )
    assert request.arguments == {"n": 7, "api_token": "[redacted]"}
    assert request.arguments_digest == arguments_digest(ARGUMENTS)
    assert (request.approver_roles, request.required_approvals, request.received_approvals) == (
        ["approver"],
        1,
        0,
    )
    assert request.policy_ids == ["tool-write-needs-approval"]
    assert (
        request.reason
        == "A write tool outside dev (and an eval's sandbox) needs an approver's approval."
    )
    assert request.requested_by == REQUESTER and request.votes == []
    assert timedelta(hours=23) < request.expires_at - request.created_at <= timedelta(hours=24)

    # The requester may not approve her own run, even holding the role; nor may a viewer.
    with pytest.raises(PolicyDenied, match="may not approve their own request") as own:
        await vote(platform, request.id, REQUESTER)
    assert own.value.code == "approval_self_approval"
    with pytest.raises(PolicyDenied, match="it needs role 'approver'") as viewer:
        await vote(platform, request.id, "user:dave")
    assert viewer.value.code == "approval_role_missing"
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run_id)).status == "AWAITING_APPROVAL"
    assert ledger.executions == []

    waits = approval_waits()
    calls = tool_calls("ledger.write")
    approved = await vote(platform, request.id, "user:bob", comment="checked entry 7")
    assert approval_waits() == {**waits, "approved": waits["approved"] + 1}
    assert (approved.status, approved.received_approvals, approved.run_status) == (
        "approved",
        1,
        "QUEUED",
    )
    assert approved.decided_at is not None
    assert [(v.principal, v.role, v.vote, v.comment) for v in approved.votes] == [
        ("user:bob", "approver", "approve", "checked entry 7")
    ]
    with pytest.raises(Conflict, match="already approved"):
        await vote(platform, request.id, "user:bob")
    with pytest.raises(Conflict, match="already approved"):
        await vote(platform, request.id, "user:carol")

    await platform.worker.run_until_idle()
    run = await run_of(platform, run_id)
    assert run.status == "SUCCEEDED" and "entry 7 written" in (run.output or "")
    assert ledger.executions == [(f"{run_id}:0:0", 7)]
    # The call went through the pipeline again, with the approval granted.
    assert tool_calls("ledger.write") == {**calls, "allow": calls["allow"] + 1}
    [call] = await calls_of(platform, run_id)
    assert (call.status, call.idempotency_key) == ("COMPLETED", f"{run_id}:0:0")
    assert await audit_actions(platform, run_id) == [
        ("approval.requested", f"worker:{platform.worker.worker_id}", "pending"),
        ("approval.vote", "user:bob", "approve"),
        ("approval.approved", "user:bob", "approved"),
    ]
    await chain_ok(platform)


async def test_two_approvals_from_distinct_approvers(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger, TWO_APPROVERS_POLICY)
    run_id, request = await paused_run(platform)
    assert (request.required_approvals, request.approver_roles) == (2, ["approver"])
    assert sorted(request.policy_ids) == ["ledger-two-approvers", "tool-write-needs-approval"]

    first = await vote(platform, request.id, "user:bob")
    assert (first.status, first.received_approvals, first.run_status) == (
        "pending",
        1,
        "AWAITING_APPROVAL",
    )
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run_id)).status == "AWAITING_APPROVAL"
    assert ledger.executions == []
    with pytest.raises(Conflict, match="user:bob already voted 'approve'"):
        await vote(platform, request.id, "user:bob")

    second = await vote(platform, request.id, "user:carol")
    assert (second.status, second.received_approvals, second.run_status) == (
        "approved",
        2,
        "QUEUED",
    )
    assert [v.principal for v in second.votes] == ["user:bob", "user:carol"]
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run_id)).status == "SUCCEEDED"
    assert ledger.executions == [(f"{run_id}:0:0", 7)]
    assert await audit_actions(platform, run_id) == [
        ("approval.requested", f"worker:{platform.worker.worker_id}", "pending"),
        ("approval.vote", "user:bob", "approve"),
        ("approval.vote", "user:carol", "approve"),
        ("approval.approved", "user:carol", "approved"),
    ]


async def test_two_approvers_voting_at_once_both_count(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger, TWO_APPROVERS_POLICY)
    run_id, request = await paused_run(platform)
    await asyncio.gather(
        vote(platform, request.id, "user:bob"), vote(platform, request.id, "user:carol")
    )
    decided = await get_approval(platform.store, request.id, tenant_id="default")
    assert (decided.status, decided.received_approvals) == ("approved", 2)
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run_id)).status == "SUCCEEDED"
    assert len(ledger.executions) == 1


async def test_a_rejection_ends_the_run_and_the_tool_never_runs(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger, TWO_APPROVERS_POLICY)
    run_id, request = await paused_run(platform)
    await vote(platform, request.id, "user:bob")  # one approval of two; one rejection decides

    with pytest.raises(InvalidRequest, match="needs a reason"):
        await vote(platform, request.id, "user:carol", "reject", reason="  ")
    with pytest.raises(PolicyDenied, match="it needs role 'approver'"):
        await vote(platform, request.id, "user:dave", "reject", reason="no")
    waits, finished = approval_waits(), runs_rejected("approval_rejected")
    rejected = await vote(platform, request.id, "user:carol", "reject", reason="wrong ledger")
    assert (rejected.status, rejected.run_status) == ("rejected", "REJECTED")
    assert approval_waits() == {**waits, "rejected": waits["rejected"] + 1}
    assert runs_rejected("approval_rejected") == finished + 1
    assert rejected.decided_at is not None
    assert [(v.principal, v.vote, v.comment) for v in rejected.votes] == [
        ("user:bob", "approve", ""),
        ("user:carol", "reject", "wrong ledger"),
    ]
    run = await run_of(platform, run_id)
    assert (run.status, run.terminal_reason) == ("REJECTED", "approval_rejected")
    assert run.error == f"approval request {request.id} rejected by user:carol: wrong ledger"
    assert (run.finished_at is not None, run.pause_reason, run.resume_condition) == (
        True,
        None,
        None,
    )
    with pytest.raises(Conflict, match="already rejected"):
        await vote(platform, request.id, "user:local-admin")

    await platform.worker.run_until_idle()
    assert (await run_of(platform, run_id)).status == "REJECTED"
    assert ledger.executions == [] and await calls_of(platform, run_id) == []
    assert [a for a, _, _ in await audit_actions(platform, run_id)] == [
        "approval.requested",
        "approval.vote",
        "approval.vote",
        "approval.rejected",
    ]
    await chain_ok(platform)


async def test_an_undecided_request_expires_and_its_run_is_rejected(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger, approval_ttl_seconds=1)
    run_id, request = await paused_run(platform)
    assert request.expires_at - request.created_at == timedelta(seconds=1)

    early, late = request.expires_at - timedelta(seconds=0.5), request.expires_at
    waits, finished = approval_waits(), runs_rejected("approval_expired")
    assert await expire_approvals(platform.store, now=early) == 0
    assert approval_waits() == waits
    assert await expire_approvals(platform.store, now=late) == 1
    assert approval_waits() == {**waits, "expired": waits["expired"] + 1}
    assert runs_rejected("approval_expired") == finished + 1
    expired = await get_approval(platform.store, request.id, tenant_id="default")
    assert (expired.status, expired.run_status) == ("expired", "REJECTED")
    run = await run_of(platform, run_id)
    assert (run.status, run.terminal_reason) == ("REJECTED", "approval_expired")
    assert request.id in (run.error or "") and "expired" in (run.error or "")
    with pytest.raises(Conflict, match="already expired"):
        await vote(platform, request.id, "user:bob")
    assert await expire_approvals(platform.store, now=utcnow() + timedelta(days=1)) == 0
    await platform.worker.run_until_idle()
    assert ledger.executions == []
    assert (await audit_actions(platform, run_id))[-1] == ("approval.expired", "system", "expired")
    await chain_ok(platform)


async def age(platform: Platform, approval_id: str) -> None:
    async with platform.store.transaction("default") as session:
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.id == approval_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


async def test_a_vote_on_an_overdue_request_expires_it_instead(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    run_id, request = await paused_run(platform)
    await age(platform, request.id)

    with pytest.raises(Conflict, match=f"its run {run_id} ended REJECTED \\(approval_expired\\)"):
        await vote(platform, request.id, "user:bob")
    expired = await get_approval(platform.store, request.id, tenant_id="default")
    assert (expired.status, expired.votes) == ("expired", [])  # the expiry was committed
    assert (await run_of(platform, run_id)).terminal_reason == "approval_expired"
    await platform.worker.run_until_idle()
    assert ledger.executions == []


async def test_the_worker_heartbeat_expires_overdue_requests(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    run_id, request = await paused_run(platform)
    await age(platform, request.id)
    platform.worker.approval_sweep_seconds = 0.05
    stop = asyncio.Event()
    loop = asyncio.create_task(platform.worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while (await run_of(platform, run_id)).status != "REJECTED":
            assert time.monotonic() < deadline, "the heartbeat did not expire the request"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop
    assert (await run_of(platform, run_id)).terminal_reason == "approval_expired"
    assert (await get_approval(platform.store, request.id, tenant_id="default")).status == (
        "expired"
    )


async def test_an_approval_covers_only_the_exact_call_approved(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    run_id, request = await paused_run(platform)
    await vote(platform, request.id, "user:bob")
    # Between the approval and the resumption, the stored call is changed.
    async with platform.store.transaction("default") as session:
        run = await get_run(session, run_id, tenant_id="default")
        pending = dict(run.pending_decision or {})
        tampered = {**pending["decision"]["tool_calls"][0], "arguments": {"n": 666}}
        pending["decision"] = {"tool_calls": [tampered]}
        await session.execute(
            update(RunRow).where(RunRow.id == run_id).values(pending_decision=pending)
        )

    await platform.worker.run_until_idle()
    assert ledger.executions == []  # neither 666 under 7's approval, nor 7
    assert (await run_of(platform, run_id)).status == "AWAITING_APPROVAL"
    [again] = await list_approvals(
        platform.store, tenant_id="default", status="pending", run_id=run_id
    )
    assert again.id != request.id
    assert (again.arguments, again.arguments_digest) == ({"n": 666}, arguments_digest({"n": 666}))
    assert (again.step_index, again.call_index) == (0, 0)


async def test_another_tenants_request_is_not_found(governed: Governed) -> None:
    platform = await governed(Ledger())
    await insert_other_tenant_request(platform)
    with pytest.raises(NotFound, match="'apr_other'"):
        await get_approval(platform.store, "apr_other", tenant_id="default")
    with pytest.raises(NotFound):
        await vote(platform, "apr_other", "user:bob")
    assert await list_approvals(platform.store, tenant_id="default") == []
    [theirs] = await list_approvals(platform.store, tenant_id="other")
    assert theirs.status == "pending" and theirs.votes == []
    async with platform.store.read(SYSTEM) as session:  # no vote in any tenant
        votes = (await session.execute(select(ApprovalVoteRow))).scalars().all()
    assert votes == []


async def insert_other_tenant_request(platform: Platform) -> None:
    now = utcnow()
    async with platform.store.transaction("other") as session:
        session.add(
            ApprovalRow(
                id="apr_other",
                tenant_id="other",
                kind="tool_call",
                status="pending",
                action="tool.call",
                subject="tool:ledger.write",
                run_id="run_other",
                step_index=0,
                call_index=0,
                idempotency_key="run_other:0:0",
                arguments_redacted={"n": 1},
                arguments_digest=arguments_digest({"n": 1}),
                reason="theirs",
                approver_roles=["approver"],
                required_approvals=1,
                policy_ids=["tool-write-needs-approval"],
                policy_decision_id="pdec_other",
                requested_by="user:mallory",
                expires_at=now + timedelta(hours=1),
                created_at=now,
            )
        )


async def test_listing_filters_and_pages(governed: Governed) -> None:
    platform = await governed(Ledger())
    first_run, first = await paused_run(platform)
    second_run, second = await paused_run(platform)
    await vote(platform, first.id, "user:bob", "reject", reason="no")

    everything = await list_approvals(platform.store, tenant_id="default")
    assert [a.id for a in everything] == [first.id, second.id]  # oldest first
    pending = await list_approvals(platform.store, tenant_id="default", status="pending")
    assert [a.id for a in pending] == [second.id]
    rejected = await list_approvals(platform.store, tenant_id="default", status="rejected")
    assert [(a.id, a.run_status) for a in rejected] == [(first.id, "REJECTED")]
    of_run = await list_approvals(platform.store, tenant_id="default", run_id=second_run)
    assert [a.id for a in of_run] == [second.id]
    page = await list_approvals(platform.store, tenant_id="default", limit=1)
    after = await list_approvals(platform.store, tenant_id="default", limit=1, after=page[0].id)
    assert [a.id for a in [*page, *after]] == [first.id, second.id]
    with pytest.raises(InvalidRequest, match="Unknown approval status 'open'"):
        await list_approvals(platform.store, tenant_id="default", status="open")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await list_approvals(platform.store, tenant_id="default", after="apr_nope")
    assert first_run != second_run


# --- the REST API ---------------------------------------------------------------------------------

LISTING_POLICY = {
    "apiVersion": "corral.dev/v1",
    "kind": "Policy",
    "metadata": {"name": "listing-needs-approval"},
    "spec": {
        "description": "Listing a directory needs an approver.",
        "cedar": """
@id("listing-needs-approval")
@decision("require_approval")
@approver_role("approver")
@reason("Listing a directory needs an approver.")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.list_dir");
""",
    },
}


def list_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("It prints 42.")
    return ToolCall("call_0", "fs.list_dir", {"path": "."})


def as_(principal: str) -> dict[str, str]:
    return {"X-Corral-Principal": principal}


async def until_status(client: httpx.AsyncClient, run_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        run: dict[str, Any] = (await client.get(f"/v1/runs/{run_id}")).json()
        if run["status"] == status:
            return run
        assert time.monotonic() < deadline, f"run {run_id} is {run['status']}, not {status}"
        await asyncio.sleep(0.02)


async def api_paused_run(client: httpx.AsyncClient, workspace: Path) -> tuple[str, dict[str, Any]]:
    created = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"task": "What is here?", "workspace": str(workspace), "stage": "dev"},
        headers=as_(REQUESTER),
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    await until_status(client, run_id, "AWAITING_APPROVAL")
    listed = await client.get("/v1/approvals", params={"status": "pending", "run_id": run_id})
    assert listed.status_code == 200, listed.text
    [approval] = listed.json()["items"]
    return run_id, approval


async def test_api_list_show_and_approve(
    api: Callable[..., Awaitable[httpx.AsyncClient]], workspace: Path
) -> None:
    client = await api(scripted=ScriptedModel(list_then_answer))
    applied = await client.post("/v1/apply", json={"documents": [agent_document(), LISTING_POLICY]})
    assert applied.status_code == 200, applied.text
    run_id, approval = await api_paused_run(client, workspace)
    approval_id = approval["id"]
    assert {k: approval[k] for k in ("kind", "status", "action", "tool", "run_id")} == {
        "kind": "tool_call",
        "status": "pending",
        "action": "tool.call",
        "tool": "fs.list_dir",
        "run_id": run_id,
    }
    assert (approval["arguments"], approval["arguments_digest"]) == (
        {"path": "."},
        arguments_digest({"path": "."}),
    )
    assert (approval["approver_roles"], approval["required_approvals"]) == (["approver"], 1)
    assert (approval["received_approvals"], approval["votes"]) == (0, [])
    assert approval["reason"] == "Listing a directory needs an approver."
    assert (approval["requested_by"], approval["run_status"]) == (REQUESTER, "AWAITING_APPROVAL")
    assert approval["step_index"] == 0 and approval["expires_at"] > approval["created_at"]

    own = await client.post(f"/v1/approvals/{approval_id}/approve", headers=as_(REQUESTER))
    assert (own.status_code, own.json()["code"]) == (403, "approval_self_approval")
    # A viewer may not decide approvals at all: refused before the request's approver roles are
    # looked at (the service's approval_role_missing is tested without the API above).
    viewer = await client.post(f"/v1/approvals/{approval_id}/approve", headers=as_("user:dave"))
    assert (viewer.status_code, viewer.json()["code"]) == (403, "permission_denied")

    approved = await client.post(
        f"/v1/approvals/{approval_id}/approve",
        json={"comment": "fine"},
        headers=as_("user:bob"),
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["status"], body["received_approvals"]) == ("approved", 1)
    assert [(v["principal"], v["vote"], v["comment"]) for v in body["votes"]] == [
        ("user:bob", "approve", "fine")
    ]
    run = await until_status(client, run_id, "SUCCEEDED")
    assert run["output"] == "It prints 42."

    again = await client.post(f"/v1/approvals/{approval_id}/approve", headers=as_("user:carol"))
    assert again.status_code == 409 and "already approved" in again.json()["message"]
    shown = (await client.get(f"/v1/approvals/{approval_id}")).json()
    assert (shown["status"], shown["run_status"], shown["decided_at"] is not None) == (
        "approved",
        "SUCCEEDED",
        True,
    )
    assert (await client.get("/v1/approvals", params={"status": "pending"})).json() == {
        "items": [],
        "next": None,
    }
    assert (await client.get("/v1/approvals", params={"status": "open"})).status_code == 422


async def test_api_reject_and_unknown_or_foreign_ids(
    api: Callable[..., Awaitable[httpx.AsyncClient]], workspace: Path
) -> None:
    client = await api(scripted=ScriptedModel(list_then_answer))
    applied = await client.post("/v1/apply", json={"documents": [agent_document(), LISTING_POLICY]})
    assert applied.status_code == 200, applied.text
    run_id, approval = await api_paused_run(client, workspace)
    url = f"/v1/approvals/{approval['id']}/reject"

    missing = await client.post(url, json={}, headers=as_("user:bob"))
    assert missing.status_code == 422
    blank = await client.post(url, json={"reason": "   "}, headers=as_("user:bob"))
    assert blank.status_code == 400 and "needs a reason" in blank.json()["message"]
    rejected = await client.post(url, json={"reason": "not today"}, headers=as_("user:bob"))
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["status"], rejected.json()["run_status"]) == ("rejected", "REJECTED")
    run = (await client.get(f"/v1/runs/{run_id}")).json()
    assert (run["status"], run["terminal_reason"]) == ("REJECTED", "approval_rejected")
    assert "not today" in run["error"]

    for unknown in ("apr_nope", "apr_other"):
        got = await client.get(f"/v1/approvals/{unknown}")
        assert (got.status_code, got.json()["code"]) == (404, "approval_not_found")
        voted = await client.post(f"/v1/approvals/{unknown}/approve", headers=as_("user:bob"))
        assert voted.status_code == 404


async def test_api_hides_another_tenants_request(
    api: Callable[..., Awaitable[httpx.AsyncClient]], settings: Settings
) -> None:
    platform = Platform(settings)  # the API's database, before the API starts
    await platform.start()
    await insert_other_tenant_request(platform)
    await platform.close()
    client = await api()
    assert (await client.get("/v1/approvals/apr_other")).status_code == 404
    voted = await client.post(
        "/v1/approvals/apr_other/reject", json={"reason": "x"}, headers=as_("user:bob")
    )
    assert voted.status_code == 404
    assert (await client.get("/v1/approvals")).json()["items"] == []


def two_writes_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer | list[ToolCall]:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("both written")
    return [
        ToolCall("call_0", "ledger.write", {"n": 1}),
        ToolCall("call_1", "ledger.write", {"n": 2}),
    ]


async def test_each_call_of_a_step_is_approved_and_runs_once(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    platform.models.providers["scripted"] = ScriptedModel(two_writes_then_answer)
    run_id, first = await paused_run(platform)
    assert (first.call_index, first.arguments) == (0, {"n": 1})
    await vote(platform, first.id, "user:bob")

    await platform.worker.run_until_idle()  # call 0 runs; call 1 asks in turn
    assert ledger.executions == [(f"{run_id}:0:0", 1)]
    assert (await run_of(platform, run_id)).status == "AWAITING_APPROVAL"
    [second] = await list_approvals(
        platform.store, tenant_id="default", status="pending", run_id=run_id
    )
    assert (second.step_index, second.call_index, second.arguments) == (0, 1, {"n": 2})
    await vote(platform, second.id, "user:carol")

    await platform.worker.run_until_idle()
    run = await run_of(platform, run_id)
    assert (run.status, run.output, run.tool_call_count) == ("SUCCEEDED", "both written", 2)
    assert ledger.executions == [(f"{run_id}:0:0", 1), (f"{run_id}:0:1", 2)]
    assert sorted((c.call_index, c.status) for c in await calls_of(platform, run_id)) == [
        (0, "COMPLETED"),
        (1, "COMPLETED"),
    ]


async def test_a_request_whose_run_ended_cannot_be_approved(governed: Governed) -> None:
    ledger = Ledger()
    platform = await governed(ledger)
    run_id, request = await paused_run(platform)
    await cancel_run(platform.store, run_id, tenant_id="default", actor="user:alice")

    # Ending the run withdraws its request: nobody can approve a call that can no longer run.
    withdrawn = await get_approval(platform.store, request.id, tenant_id="default")
    assert (withdrawn.status, withdrawn.votes, withdrawn.run_status) == (
        "withdrawn",
        [],
        "CANCELLED",
    )
    with pytest.raises(Conflict):
        await vote(platform, request.id, "user:bob")
    await platform.worker.run_until_idle()
    assert ledger.executions == []


async def test_the_agent_contracts_own_approval_rules_hold_calls_even_in_dev(
    governed: Governed,
) -> None:
    """``spec.approvals`` makes an allowed call wait for its approvers (policy allows writes in
    dev); approving the rule's id lets exactly that call run once."""
    ledger = Ledger()
    platform = await governed(ledger)
    strict = agent_document(
        tools={"allowed": ["ledger.*"]},
        approvals=[{"tools": ["ledger.*"], "approver_role": "approver", "required_approvals": 1}],
    )
    await register(platform, strict)
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Write entry 7.",
            requested_by=REQUESTER,
            stage="dev",
            governance=platform.governance,
        )
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run.id)).status == "AWAITING_APPROVAL"
    [request] = await list_approvals(
        platform.store, tenant_id="default", status="pending", run_id=run.id
    )
    assert request.policy_ids == ["agent:repo-analyst/approvals[0]"]
    assert ledger.executions == []

    await vote(platform, request.id, "user:bob")
    await platform.worker.run_until_idle()
    assert (await run_of(platform, run.id)).status == "SUCCEEDED"
    assert [n for _, n in ledger.executions] == [7]


async def test_agents_and_service_accounts_no_policy_permits_never_vote(
    governed: Governed,
) -> None:
    platform = await governed(Ledger())
    run_id, request = await paused_run(platform)
    for principal in ("agent:repo-analyst", "service:bot"):
        for how, text in (("approve", {}), ("reject", {"reason": "no"})):
            with pytest.raises(PolicyDenied) as denied:
                await decide_approval(
                    platform.store,
                    request.id,
                    tenant_id="default",
                    principal=principal,
                    roles=["approver"],
                    vote=how,  # type: ignore[arg-type]
                    governance=platform.governance,
                    **text,
                )
            assert denied.value.code == "approval_service_vote"
    # A vote counts as the voter's accountable human: a key acting for the requester is her.
    with pytest.raises(PolicyDenied, match="may not approve their own request"):
        await decide_approval(
            platform.store,
            request.id,
            tenant_id="default",
            principal="user:bob-laptop",
            accountable=REQUESTER,
            roles=["approver"],
            vote="approve",
        )
    assert (await run_of(platform, run_id)).status == "AWAITING_APPROVAL"
    assert (await get_approval(platform.store, request.id, tenant_id="default")).votes == []


# --- the wait, as a span of the run's trace -------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def wait_spans(platform: Platform, run_id: str) -> tuple[RunRow, list[dict[str, Any]]]:
    async with platform.store.read("default") as session:
        run = await get_run(session, run_id, tenant_id="default")
        spans = await list_run_spans(session, run_id, tenant_id="default")
    return run, [s for s in spans if s["name"] == "approval.wait"]


async def test_the_wait_for_a_decision_is_an_approval_wait_span(governed: Governed) -> None:
    platform = await governed(Ledger(), approval_ttl_seconds=60)
    approved_run, first = await paused_run(platform)
    rejected_run, second = await paused_run(platform)
    expired_run, third = await paused_run(platform)
    assert (await wait_spans(platform, approved_run))[1] == []  # none while it waits

    approved = await vote(platform, first.id, "user:bob")
    rejected = await vote(platform, second.id, "user:carol", "reject", reason="not today")
    assert await expire_approvals(platform.store, now=third.expires_at) == 1

    cases = [
        (approved_run, first, "approved", "user:bob", approved.decided_at),
        (rejected_run, second, "rejected", "user:carol", rejected.decided_at),
        (expired_run, third, "expired", "system", third.expires_at),
    ]
    for run_id, request, status, actor, decided_at in cases:
        run, [span] = await wait_spans(platform, run_id)
        # In the run's trace, from the stored request time to the decision.
        assert (span["trace_id"], span["parent_span_id"]) == (run.trace_id, None)
        assert decided_at is not None
        assert as_utc(span["start_time"]) == as_utc(request.created_at)
        assert as_utc(span["end_time"]) == as_utc(decided_at)
        assert span["attributes"] == {
            "corral.run.id": run_id,
            "corral.approval.id": request.id,
            "corral.approval.status": status,
            "corral.approval.subject": "tool:ledger.write",
            "corral.approval.decided_by": actor,
            "corral.policy.decision_id": request.policy_decision_id,
        }
    await platform.worker.run_until_idle()  # the approved run finishes; still one wait span
    run, [_] = await wait_spans(platform, approved_run)
    assert run.status == "SUCCEEDED"
