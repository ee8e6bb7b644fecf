"""``GET /v1/runs/{id}/events``: a run's events as Server-Sent Events, replayed and live."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, NamedTuple

import httpx
import pytest
import uvicorn
from sqlalchemy import update

import corral.api.runs
from conftest import PrincipalKeys, agent_document, register
from corral.api import create_app
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES, Worker, create_run
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import utcnow
from corral.testing import ScriptedModel


def parse(text: str) -> list[dict[str, Any]]:
    """Events of an SSE body: ``{"id", "event", "data"}`` each, comments left out."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if fields:
            events.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return events


async def finished_run(client: httpx.AsyncClient, workspace) -> str:
    await client.post("/v1/apply", json={"documents": [agent_document()]})
    response = await client.post(
        "/v1/agents/repo-analyst/runs",
        json={"stage": "dev", "task": "What is this?", "workspace": str(workspace)},
    )
    run_id = str(response.json()["id"])
    for _ in range(200):
        if (await client.get(f"/v1/runs/{run_id}")).json()["status"] in TERMINAL_STATUSES:
            return run_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


def list_then_answer() -> ScriptedModel:
    return ScriptedModel(
        [ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("A demo package.")]
    )


async def test_a_finished_run_streams_every_event_in_order_then_ends(api, workspace) -> None:
    client = await api(scripted=list_then_answer())
    run_id = await finished_run(client, workspace)

    response = await client.get(f"/v1/runs/{run_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = parse(response.text)
    assert [e["event"] for e in events] == [
        "run.created",
        "step",
        "tool_call",
        "step",
        "run.finished",
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    assert all(e["data"]["run_id"] == run_id for e in events)
    assert all(e["data"]["type"] == e["event"] for e in events)
    created, step, call, answer, finished = (e["data"]["data"] for e in events)
    assert (created["agent"], created["model"]) == ("repo-analyst", "scripted/test")
    assert (step["index"], step["kind"]) == (0, "tool_calls")
    assert (call["step"], call["tool"], call["arguments"], call["status"]) == (
        0,
        "fs.list_dir",
        {"path": "."},
        "COMPLETED",
    )
    assert (answer["index"], answer["kind"], answer["decision"]) == (
        1,
        "final_answer",
        {"final_answer": "A demo package."},
    )
    assert (finished["status"], finished["output"]) == ("SUCCEEDED", "A demo package.")


async def test_last_event_id_resumes_after_that_event(api, workspace) -> None:
    client = await api(scripted=list_then_answer())
    run_id = await finished_run(client, workspace)
    everything = parse((await client.get(f"/v1/runs/{run_id}/events")).text)
    middle = everything[1]["id"]

    resumed = await client.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(middle)})
    assert resumed.status_code == 200
    assert parse(resumed.text) == everything[2:]
    after = await client.get(f"/v1/runs/{run_id}/events", params={"after": middle})
    assert parse(after.text) == everything[2:]
    # A reconnecting browser sends Last-Event-ID to the URL it first used: the later one wins.
    both = await client.get(
        f"/v1/runs/{run_id}/events",
        params={"after": middle},
        headers={"Last-Event-ID": str(everything[3]["id"])},
    )
    assert parse(both.text) == everything[4:]
    last = await client.get(
        f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(everything[-1]["id"])}
    )
    assert (last.status_code, last.text) == (200, "")

    bad = await client.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "step-3"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


async def test_unknown_run_is_404_before_any_stream(api) -> None:
    client = await api(scripted=ScriptedModel([]))
    response = await client.get("/v1/runs/run_nope/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "run_not_found"


async def test_events_of_a_run_that_moves_between_workers_arrive(
    settings: Settings, make_platform, workspace
) -> None:
    """The stream reads the table: a second worker's events reach a stream opened before."""
    crashed = False

    def script(request: ModelRequest) -> ToolCall | FinalAnswer:
        nonlocal crashed
        if not any(m.role == "tool" for m in request.messages):
            return ScriptedModel.call("fs.list_dir", path=".")
        if not crashed:
            crashed = True
            raise asyncio.CancelledError  # the first worker dies here, mid-step
        return ScriptedModel.answer("resumed")

    platform = await make_platform(scripted=ScriptedModel(script))
    await register(platform, agent_document())
    app = create_app(platform, run_worker=False)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://corral",
        auth=PrincipalKeys(platform),
    )
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="x",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    stream = asyncio.create_task(client.get(f"/v1/runs/{run.id}/events"))

    first = Worker(platform.store, platform.executor, worker_id="first")
    await first.run_until_idle()
    async with platform.store.transaction("default") as session:
        await session.execute(
            update(RunRow)
            .where(RunRow.id == run.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    await Worker(platform.store, platform.executor, worker_id="second").run_until_idle()

    response = await asyncio.wait_for(stream, 10)
    await client.aclose()
    events = parse(response.text)
    assert [e["event"] for e in events] == [
        "run.created",
        "step",
        "tool_call",
        "step",
        "run.finished",
    ]
    assert events[-1]["data"]["data"]["output"] == "resumed"


# --- live streams over a real HTTP server ------------------------------------------------------


class Gate:
    """Model script: step 0 lists the workspace at once; step 1 answers once released."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: ModelRequest) -> ToolCall | FinalAnswer:
        if not any(m.role == "tool" for m in request.messages):
            return ScriptedModel.call("fs.list_dir", path=".")
        self.waiting.set()
        await self.release.wait()
        return ScriptedModel.answer("Finally.")


class Live(NamedTuple):
    """A live server: its URL, the uvicorn server, and credentials for its clients."""

    url: str
    server: uvicorn.Server
    auth: PrincipalKeys


LiveServer = Callable[..., Awaitable[Live]]


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """``url, server, auth = await live_server(scripted=...)``: uvicorn serving the app here."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**providers: Any) -> Live:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        platform = Platform(settings, providers=providers)
        app = create_app(platform)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        for _ in range(400):
            if server.started:
                return Live(f"http://127.0.0.1:{port}", server, PrincipalKeys(platform))
            await asyncio.sleep(0.025)
        raise AssertionError("uvicorn did not start")

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def start_live_run(live: Live, workspace) -> str:
    async with httpx.AsyncClient(base_url=live.url, auth=live.auth) as client:
        await client.post("/v1/apply", json={"documents": [agent_document()]})
        response = await client.post(
            "/v1/agents/repo-analyst/runs",
            json={"stage": "dev", "task": "x", "workspace": str(workspace)},
        )
        return str(response.json()["id"])


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any]:
    """Read lines up to the end of the next event (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if fields:
                break
            continue
        if not line.startswith(":"):
            key, value = line.split(": ", 1)
            fields[key] = value
    return {"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])}


async def test_a_live_stream_gets_events_as_they_commit_and_ends_after_finish(
    live_server, workspace
) -> None:
    gate = Gate()
    live = await live_server(scripted=ScriptedModel(gate))
    run_id = await start_live_run(live, workspace)

    async with (
        httpx.AsyncClient(base_url=live.url, auth=live.auth, timeout=20) as client,
        client.stream("GET", f"/v1/runs/{run_id}/events") as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        seen = [await next_event(lines) for _ in range(3)]
        assert [e["event"] for e in seen] == ["run.created", "step", "tool_call"]
        # Step 1 is still in its model call: these events came while the run is running.
        await asyncio.wait_for(gate.waiting.wait(), 10)
        assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "RUNNING"
        gate.release.set()
        seen += [await next_event(lines) for _ in range(2)]
        assert [e["event"] for e in seen[3:]] == ["step", "run.finished"]
        assert seen[-1]["data"]["data"]["output"] == "Finally."
        assert [line async for line in lines] == []  # the server ended the stream
    ids = [e["id"] for e in seen]
    assert ids == sorted(set(ids))


async def test_a_quiet_stream_sends_keep_alive_comments(
    live_server, workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corral.api.runs, "SSE_KEEPALIVE_SECONDS", 0.3)
    gate = Gate()
    live = await live_server(scripted=ScriptedModel(gate))
    run_id = await start_live_run(live, workspace)

    async with (
        httpx.AsyncClient(base_url=live.url, auth=live.auth, timeout=20) as client,
        client.stream("GET", f"/v1/runs/{run_id}/events") as response,
    ):
        lines = response.aiter_lines()
        comments = 0
        async with asyncio.timeout(10):
            async for line in lines:
                if line == ": keep-alive":
                    comments += 1
                    if comments == 2:
                        break
        assert gate.waiting.is_set() and not gate.release.is_set()
        gate.release.set()
        rest = parse("\n".join([line async for line in lines]))
        assert rest[-1]["event"] == "run.finished"


async def test_the_server_stops_streaming_when_the_client_goes_away(live_server, workspace) -> None:
    gate = Gate()
    live = await live_server(scripted=ScriptedModel(gate))
    run_id = await start_live_run(live, workspace)
    await asyncio.wait_for(gate.waiting.wait(), 10)

    async with httpx.AsyncClient(base_url=live.url, auth=live.auth, timeout=20) as client:
        async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
            assert (await next_event(response.aiter_lines()))["event"] == "run.created"
            assert len(live.server.server_state.tasks) == 1  # the stream's request
        # The client closed the connection while the run waits in its model call.
        for _ in range(100):  # at most ~5 s
            if not live.server.server_state.tasks:
                break
            await asyncio.sleep(0.05)
        assert not live.server.server_state.tasks
        assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "RUNNING"
    gate.release.set()
