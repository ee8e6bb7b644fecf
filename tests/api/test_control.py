"""Run control over REST: cancel, in-doubt resolution and kill switches at three scopes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from conftest import PrincipalKeys, agent_document
from corral.api import create_app
from corral.contracts import Tool
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.gateway.tools._fs import BuiltinTool
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import utcnow
from corral.testing import ScriptedModel

AppFactory = Callable[..., Awaitable[tuple[httpx.AsyncClient, Platform]]]


@pytest.fixture
async def control_api(settings: Settings) -> AsyncIterator[AppFactory]:
    """``client, platform = await control_api(run_worker=..., builtins=..., **providers)``.

    Workers check for signals only every 60 s here, so a running run stops at once only
    because the API tells its in-process worker.
    """
    runtime = settings.runtime.model_copy(update={"signal_poll_seconds": 60.0})
    settings = settings.model_copy(update={"runtime": runtime})
    contexts: list[Any] = []

    async def make(
        *, run_worker: bool = True, builtins: dict[str, BuiltinTool] | None = None, **providers: Any
    ) -> tuple[httpx.AsyncClient, Platform]:
        platform = Platform(settings, providers=providers, builtins=builtins)
        app = create_app(platform, run_worker=run_worker)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(platform),
        )
        contexts.append((client, lifespan))
        return client, platform

    yield make
    for client, lifespan in reversed(contexts):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


class Gate:
    """A model script whose calls wait until ``release`` is set: it holds a run RUNNING."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: ModelRequest) -> ToolCall | FinalAnswer:
        self.called.set()
        await self.release.wait()
        if any(m.role == "tool" for m in request.messages):
            return ScriptedModel.answer("done")
        return ScriptedModel.call("fs.list_dir", path=".")


async def apply(client: httpx.AsyncClient, *documents: dict[str, Any]) -> None:
    response = await client.post("/v1/apply", json={"documents": list(documents)})
    assert response.status_code == 200, response.text


async def start_run(client: httpx.AsyncClient, agent: str = "repo-analyst", **body: Any) -> str:
    response = await client.post(
        f"/v1/agents/{agent}/runs", json={"stage": "dev", "task": "Look around.", **body}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_for(
    client: httpx.AsyncClient, run_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for _ in range(400):  # at most ~20 s
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        if done(run):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not get there: {run}")


async def wait_for_end(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    return await wait_for(client, run_id, lambda run: run["status"] in TERMINAL_STATUSES)


async def run_status(client: httpx.AsyncClient, agent: str) -> int:
    """The HTTP status of starting a run of ``agent``."""
    return (
        await client.post(f"/v1/agents/{agent}/runs", json={"stage": "dev", "task": "x"})
    ).status_code


async def event_types(client: httpx.AsyncClient, run_id: str) -> list[str]:
    """The ``event:`` lines of the run's (finished) event stream."""
    response = await client.get(f"/v1/runs/{run_id}/events")
    assert response.status_code == 200
    lines = response.text.splitlines()
    return [line.removeprefix("event: ") for line in lines if line.startswith("event:")]


# --- cancel ------------------------------------------------------------------------------------


async def test_cancel_of_a_queued_run_ends_it_now(control_api) -> None:
    client, _ = await control_api(run_worker=False, scripted=ScriptedModel([]))
    await apply(client, agent_document())
    run_id = await start_run(client)

    response = await client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    run = response.json()
    assert (run["status"], run["terminal_reason"], run["error"]) == (
        "CANCELLED",
        "cancelled",
        "cancelled by user:local-admin",
    )
    assert run["finished_at"] is not None
    assert await event_types(client, run_id) == ["run.created", "run.finished"]
    audit = (await client.get("/v1/audit/events", params={"run_id": run_id})).json()["items"]
    assert [(e["action"], e["outcome"], e["actor"]) for e in audit] == [
        ("run.created", "success", "user:local-admin"),
        ("run.finished", "cancelled", "user:local-admin"),
    ]


async def test_cancel_of_a_running_run_is_requested_and_stops_it(control_api, workspace) -> None:
    gate = Gate()
    model = ScriptedModel(gate)
    client, _ = await control_api(scripted=model)
    await apply(client, agent_document())
    run_id = await start_run(client, workspace=str(workspace))
    await asyncio.wait_for(gate.called.wait(), 10)

    response = await client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("RUNNING", True)
    # The model call in flight was abandoned: the run ends without waiting for it.
    run = await wait_for_end(client, run_id)
    gate.release.set()
    assert (run["status"], run["terminal_reason"], run["step_count"]) == (
        "CANCELLED",
        "cancelled",
        0,
    )
    assert len(model.requests) == 1
    assert await event_types(client, run_id) == [
        "run.created",
        "run.cancel_requested",
        "run.finished",
    ]


async def test_cancel_of_an_ended_run_is_409_naming_its_status(control_api) -> None:
    client, _ = await control_api(scripted=ScriptedModel([ScriptedModel.answer("hi")]))
    await apply(client, agent_document())
    run_id = await start_run(client)
    assert (await wait_for_end(client, run_id))["status"] == "SUCCEEDED"

    response = await client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert f"Run {run_id!r} already ended SUCCEEDED" in response.json()["message"]
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "SUCCEEDED"
    missing = await client.post("/v1/runs/run_nope/cancel")
    assert (missing.status_code, missing.json()["code"]) == (404, "run_not_found")


# --- in-doubt resolution -----------------------------------------------------------------------


def email_tool(sent: list[dict[str, Any]]) -> BuiltinTool:
    """A side-effecting tool that does not honour idempotency keys; its first call kills the
    worker mid-call (after the effect), like a process killed at the worst moment."""

    async def send(arguments: dict[str, Any], _workspace: Path | None, **_: Any) -> str:
        sent.append(arguments)
        if len(sent) == 1:
            raise asyncio.CancelledError
        return f"sent to {arguments['to']}"

    contract = Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": "test.send_email", "version": "1.0.0"},
            "spec": {
                "description": "Send an email.",
                "side_effect": "write",
                "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}},
            },
        }
    )
    return BuiltinTool(contract, send)


def email_script(request: ModelRequest) -> ToolCall | FinalAnswer:
    tool_messages = [m.content for m in request.messages if m.role == "tool"]
    if not tool_messages:
        return ScriptedModel.call("test.send_email", to="a@example.com")
    return ScriptedModel.answer("Done.")


async def in_doubt_run(control_api, sent: list[dict[str, Any]]) -> tuple[httpx.AsyncClient, str]:
    """A run whose worker died during its side-effecting call, recovered as ``IN_DOUBT``."""
    client, platform = await control_api(
        scripted=ScriptedModel(email_script), builtins={"test.send_email": email_tool(sent)}
    )
    await apply(client, agent_document(tools={"allowed": ["test.send_email"]}))
    run_id = await start_run(client)
    for _ in range(200):
        if sent:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # let the dead worker's task unwind
    # The dead worker's lease runs out; the live worker claims the run again.
    async with platform.store.transaction("default") as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(lease_owner="dead-worker", lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    platform.worker.wake()
    run = await wait_for(client, run_id, lambda run: run["status"] != "RUNNING")
    assert run["status"] == "IN_DOUBT", run
    return client, run_id


@pytest.mark.parametrize(
    ("resolution", "executions", "call_status", "model_saw"),
    [
        ("done", 1, "COMPLETED", "resolved as done by user:local-admin: checked the outbox"),
        ("retry", 2, "COMPLETED", "sent to a@example.com"),
        ("failed", 1, "FAILED", "resolved as failed by user:local-admin: checked the outbox"),
    ],
)
async def test_resolve_settles_the_in_doubt_call_and_the_run_goes_on(
    control_api, resolution: str, executions: int, call_status: str, model_saw: str
) -> None:
    sent: list[dict[str, Any]] = []
    client, run_id = await in_doubt_run(control_api, sent)
    paused = (await client.get(f"/v1/runs/{run_id}")).json()
    assert f"corral runs resolve {run_id} --as done|retry|failed" in paused["pause_reason"]

    response = await client.post(
        f"/v1/runs/{run_id}/resolve",
        json={"resolution": resolution, "comment": "checked the outbox"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["idempotency_key"], body["resolution"]) == (f"{run_id}:0:0", resolution)
    assert body["run"]["status"] != "IN_DOUBT"

    run = await wait_for_end(client, run_id)
    assert (run["status"], run["output"]) == ("SUCCEEDED", "Done.")
    assert len(sent) == executions
    [step, _] = (await client.get(f"/v1/runs/{run_id}/steps")).json()
    [call] = step["tool_calls"]
    assert call["status"] == call_status
    assert model_saw in (call["output"] or call["error"])
    types = await event_types(client, run_id)
    assert types[types.index("run.paused") :] == [
        "run.paused",
        "run.resumed",
        "step",
        "tool_call",
        "step",
        "run.finished",
    ]

    again = await client.post(f"/v1/runs/{run_id}/resolve", json={"resolution": resolution})
    assert again.status_code == 409
    assert "is SUCCEEDED, not IN_DOUBT" in again.json()["message"]


async def test_resolve_refuses_what_it_cannot_honour(control_api) -> None:
    client, _ = await control_api(run_worker=False, scripted=ScriptedModel([]))
    await apply(client, agent_document())
    run_id = await start_run(client)
    queued = await client.post(f"/v1/runs/{run_id}/resolve", json={"resolution": "done"})
    assert queued.status_code == 409
    assert "is QUEUED, not IN_DOUBT" in queued.json()["message"]
    bogus = await client.post(f"/v1/runs/{run_id}/resolve", json={"resolution": "maybe"})
    assert (bogus.status_code, bogus.json()["code"]) == (422, "invalid_request")
    missing = await client.post("/v1/runs/run_nope/resolve", json={"resolution": "done"})
    assert missing.status_code == 404


# --- kill switches -----------------------------------------------------------------------------


async def engage(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/v1/kill-switches", json={"reason": "INC-42: bad outputs", **body})


async def test_agent_kill_switch_kills_queued_runs_and_refuses_new_ones(control_api) -> None:
    client, _ = await control_api(run_worker=False, scripted=ScriptedModel([]))
    await apply(client, agent_document(), agent_document("other"))
    doomed = [await start_run(client), await start_run(client)]
    spared = await start_run(client, "other")

    response = await engage(client, scope="agent", target="repo-analyst")
    assert response.status_code == 201, response.text
    switch = response.json()
    keys = ("scope", "target", "tenant_id", "engaged_by", "killed_runs")
    assert {k: switch[k] for k in keys} == {
        "scope": "agent",
        "target": "repo-analyst",
        "tenant_id": "default",
        "engaged_by": "user:local-admin",
        "killed_runs": 2,
    }
    described = "kill switch 'agent:repo-analyst' engaged by user:local-admin: INC-42: bad outputs"
    for run_id in doomed:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        assert (run["status"], run["terminal_reason"], run["error"]) == (
            "KILLED",
            "kill_switch",
            described,
        )
        assert await event_types(client, run_id) == ["run.created", "run.finished"]
    assert (await client.get(f"/v1/runs/{spared}")).json()["status"] == "QUEUED"

    refused = await client.post("/v1/agents/repo-analyst/runs", json={"stage": "dev", "task": "x"})
    assert refused.status_code == 423
    error = refused.json()
    assert (error["code"], error["scope"], error["target"], error["engaged_by"]) == (
        "kill_switch_engaged",
        "agent",
        "repo-analyst",
        "user:local-admin",
    )
    assert described in error["message"]
    assert "corral kill-switch release --agent repo-analyst" in error["message"]
    assert await run_status(client, "other") == 201

    twice = await engage(client, scope="agent", target="repo-analyst")
    assert twice.status_code == 409
    assert "'agent:repo-analyst' engaged by user:local-admin" in twice.json()["message"]
    listed = (await client.get("/v1/kill-switches")).json()
    assert [(s["scope"], s["target"], s["released_at"]) for s in listed] == [
        ("agent", "repo-analyst", None)
    ]

    released = await client.post(
        "/v1/kill-switches/release", json={"scope": "agent", "target": "repo-analyst"}
    )
    assert released.status_code == 200, released.text
    assert (released.json()["released_by"], released.json()["engaged_by"]) == (
        "user:local-admin",
        "user:local-admin",
    )
    assert await run_status(client, "repo-analyst") == 201
    assert (await client.get("/v1/kill-switches")).json() == []
    history = (await client.get("/v1/kill-switches", params={"include_released": True})).json()
    assert [(s["target"], s["released_by"]) for s in history] == [
        ("repo-analyst", "user:local-admin")
    ]
    again = await client.post(
        "/v1/kill-switches/release", json={"scope": "agent", "target": "repo-analyst"}
    )
    assert (again.status_code, again.json()["code"]) == (404, "kill_switch_not_found")

    actions = [
        (e["action"], e["subject"])
        for e in (await client.get("/v1/audit/events", params={"limit": 1000})).json()["items"]
        if e["action"].startswith("kill_switch.")
    ]
    assert actions == [
        ("kill_switch.engaged", "kill_switch:agent:repo-analyst"),
        ("kill_switch.released", "kill_switch:agent:repo-analyst"),
    ]


@pytest.mark.parametrize(("scope", "target"), [("tenant", "default"), ("platform", "*")])
async def test_tenant_and_platform_switches_stop_every_agent(control_api, scope, target) -> None:
    client, _ = await control_api(run_worker=False, scripted=ScriptedModel([]))
    await apply(client, agent_document(), agent_document("other"))
    queued = [await start_run(client), await start_run(client, "other")]

    response = await engage(client, scope=scope)  # the target defaults to the caller's
    assert response.status_code == 201, response.text
    assert (response.json()["target"], response.json()["killed_runs"]) == (target, 2)
    for run_id in queued:
        assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "KILLED"
    for agent in ("repo-analyst", "other"):
        refused = await client.post(f"/v1/agents/{agent}/runs", json={"stage": "dev", "task": "x"})
        assert refused.status_code == 423
        assert (refused.json()["scope"], refused.json()["target"]) == (scope, target)
        message = refused.json()["message"]
        assert f"kill switch '{scope}:{target}' engaged by user:local-admin" in message
    assert (await engage(client, scope=scope, target=target)).status_code == 409

    released = await client.post("/v1/kill-switches/release", json={"scope": scope})
    assert released.status_code == 200, released.text
    for agent in ("repo-analyst", "other"):
        assert await run_status(client, agent) == 201


async def test_kill_switch_stops_a_running_run_at_its_next_check(control_api, workspace) -> None:
    gate = Gate()
    model = ScriptedModel(gate)
    client, _ = await control_api(scripted=model)
    await apply(client, agent_document())
    run_id = await start_run(client, workspace=str(workspace))
    await asyncio.wait_for(gate.called.wait(), 10)

    response = await engage(client, scope="agent", target="repo-analyst")
    assert (response.status_code, response.json()["killed_runs"]) == (201, 0)
    run = await wait_for_end(client, run_id)
    gate.release.set()
    assert (run["status"], run["terminal_reason"], run["step_count"]) == (
        "KILLED",
        "kill_switch",
        0,
    )
    assert "kill switch 'agent:repo-analyst' engaged by user:local-admin" in run["error"]
    assert len(model.requests) == 1


async def test_kill_switch_requests_that_cannot_be_honoured(control_api) -> None:
    client, _ = await control_api(run_worker=False, scripted=ScriptedModel([]))
    await apply(client, agent_document())

    no_target = await engage(client, scope="agent")
    assert (no_target.status_code, no_target.json()["code"]) == (400, "invalid_request")
    assert "--agent NAME" in no_target.json()["message"]
    unknown = await engage(client, scope="agent", target="nope")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "agent_not_found")
    platform_target = await engage(client, scope="platform", target="default")
    assert platform_target.status_code == 400
    assert "'*'" in platform_target.json()["message"]
    blank = await engage(client, scope="agent", target="repo-analyst", reason="  ")
    assert (blank.status_code, blank.json()["code"]) == (400, "invalid_request")
    missing = await client.post("/v1/kill-switches", json={"scope": "platform"})
    assert missing.status_code == 422
    assert any("reason" in issue for issue in missing.json()["issues"])
    bad_scope = await engage(client, scope="galaxy")
    assert bad_scope.status_code == 422
    extra = await engage(client, scope="platform", force=True)
    assert extra.status_code == 422
    assert (await client.get("/v1/kill-switches", params={"include_released": True})).json() == []
    assert await run_status(client, "repo-analyst") == 201
