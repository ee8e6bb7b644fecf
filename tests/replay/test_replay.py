"""Replay: exact replays reproduce a run; no replay ever repeats a side effect."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event

from conftest import agent_document, register
from corral.api import create_app
from corral.contracts import Tool
from corral.errors import ModelAPIError, NotFound
from corral.gateway.models import FinalAnswer, Message, ModelRequest
from corral.gateway.tools import BuiltinTool
from corral.platform import Platform
from corral.runtime import TERMINAL_STATUSES, get_run, list_steps
from corral.settings import Settings
from corral.testing import ScriptedModel
from tenancy._world import World, live_world


class Notes:
    """A side-effecting builtin, ``notes.append``: appends a line to ``notes.txt``."""

    def __init__(self) -> None:
        self.executions = 0

    def builtins(self) -> dict[str, BuiltinTool]:
        tool = Tool.model_validate(
            {
                "apiVersion": "corral.dev/v1",
                "kind": "Tool",
                "metadata": {"name": "notes.append", "version": "1.0.0"},
                "spec": {
                    "description": "Append a line to notes.txt in the workspace.",
                    "side_effect": "write",
                    "input_schema": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
            }
        )
        return {"notes.append": BuiltinTool(tool, self._append)}

    async def _append(self, arguments: dict[str, Any], workspace: Path | None, **_: Any) -> str:
        assert workspace is not None
        self.executions += 1
        with (workspace / "notes.txt").open("a") as notes:
            notes.write(arguments["text"] + "\n")
        return f"appended {arguments['text']!r}"


async def _world(settings: Settings, model: ScriptedModel, notes: Notes) -> tuple[Any, World]:
    platform = Platform(settings, providers={"scripted": model}, builtins=notes.builtins())
    app = create_app(platform)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://corral")
    return lifespan, World(platform, client)


async def _run(world: World, workspace: Path) -> str:
    response = await world.as_(
        "POST",
        "/v1/agents/repo-analyst/runs",
        json={"task": "Note the title.", "workspace": str(workspace), "stage": "dev"},
    )
    assert response.status_code == 201, response.text
    await _finished(world, response.json()["id"])
    return str(response.json()["id"])


async def _finished(world: World, run_id: str) -> None:
    """Wait for the run to end (the app's own worker may be the one running it)."""
    for _ in range(1000):
        await world.platform.worker.run_until_idle()
        run = (await world.as_("GET", f"/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL_STATUSES:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} stayed {run['status']}")


async def _calls(world: World, run_id: str) -> list[tuple[str, dict[str, Any], str, str | None]]:
    async with world.platform.store.read("default") as session:
        steps = await list_steps(session, run_id, tenant_id="default")
    return [
        (c.tool_name, c.arguments, str(c.status), c.output) for _, calls in steps for c in calls
    ]


async def test_an_exact_replay_reproduces_the_run_without_repeating_its_effect(settings, workspace):
    model = ScriptedModel(
        [
            ScriptedModel.call("fs.read_file", path="README.md"),
            ScriptedModel.call("notes.append", text="title: Demo"),
            ScriptedModel.answer("The title is Demo."),
        ]
    )
    notes = Notes()
    lifespan, world = await _world(settings, model, notes)
    try:
        agent = agent_document(tools={"allowed": ["fs.*", "notes.*"]})
        await register(world.platform, agent)
        source = await _run(world, workspace)
        assert (workspace / "notes.txt").read_text() == "title: Demo\n"

        response = await world.as_("POST", f"/v1/runs/{source}/replay", json={})
        assert response.status_code == 201, response.text
        replay = response.json()["id"]
        assert response.json()["model"] == f"replay/{source}"
        await _finished(world, replay)

        async with world.platform.store.read("default") as session:
            original = await get_run(session, source, tenant_id="default")
            replayed = await get_run(session, replay, tenant_id="default")
        assert (replayed.status, replayed.output) == ("SUCCEEDED", original.output)
        assert replayed.output == "The title is Demo."
        assert await _calls(world, replay) == await _calls(world, source)
        assert [c[0] for c in await _calls(world, replay)] == ["fs.read_file", "notes.append"]
        # The recorded outputs answered: no model call, and the write happened once.
        assert len(model.requests) == 3
        assert notes.executions == 1
        assert (workspace / "notes.txt").read_text() == "title: Demo\n"
        audit = await world.as_("GET", "/v1/audit/events", params={"limit": 500})
        replays = [e for e in audit.json()["items"] if e["action"] == "run.replay"]
        assert [e["subject"] for e in replays] == [f"run:{replay}"]
    finally:
        await world.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_a_what_if_replay_serves_recorded_results_and_denies_new_effects(settings, workspace):
    steps: list[Any] = [
        ScriptedModel.call("notes.append", text="first"),
        ScriptedModel.answer("noted"),
        # The new version: the same call (served from the recording), then a new one.
        ScriptedModel.call("notes.append", text="first"),
        ScriptedModel.call("notes.append", text="second"),
        ScriptedModel.answer("noted twice"),
    ]
    model = ScriptedModel(lambda request: steps.pop(0))
    notes = Notes()
    lifespan, world = await _world(settings, model, notes)
    try:
        await register(world.platform, agent_document(tools={"allowed": ["notes.*"]}))
        source = await _run(world, workspace)
        await register(
            world.platform,
            agent_document(tools={"allowed": ["notes.*"]}, description="Takes more notes."),
        )
        response = await world.as_(
            "POST", f"/v1/runs/{source}/replay", json={"agent": "repo-analyst", "version": "0.1.1"}
        )
        assert response.status_code == 201, response.text
        replay = response.json()
        assert (replay["agent_version"], replay["model"]) == ("0.1.1", "scripted/test")
        await _finished(world, replay["id"])

        calls = await _calls(world, replay["id"])
        assert [(name, status) for name, _, status, _ in calls] == [
            ("notes.append", "COMPLETED"),
            ("notes.append", "DENIED"),
        ]
        assert calls[0][3] == "appended 'first'"
        assert "never executes a side-effecting call" in (calls[1][3] or "")
        assert notes.executions == 1
        assert (workspace / "notes.txt").read_text() == "first\n"
        async with world.platform.store.read("default") as session:
            done = await get_run(session, replay["id"], tenant_id="default")
        assert (done.status, done.output) == ("SUCCEEDED", "noted twice")
        assert done.replay_of == source
    finally:
        await world.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_a_run_that_is_not_a_replay_never_reads_the_replay_table(settings, workspace):
    model = ScriptedModel(
        [
            ScriptedModel.call("notes.append", text="one"),
            ScriptedModel.call("notes.append", text="two"),
            ScriptedModel.answer("noted"),
        ]
    )
    notes = Notes()
    lifespan, world = await _world(settings, model, notes)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        await register(world.platform, agent_document(tools={"allowed": ["notes.*"]}))
        run_id = await _run(world, workspace)
        assert notes.executions == 2
        async with world.platform.store.read("default") as session:
            run = await get_run(session, run_id, tenant_id="default")
        assert (run.status, run.replay_of) == ("SUCCEEDED", None)
        assert any("tool_calls" in s for s in statements)  # the listener saw the run's writes
        assert [s for s in statements if "run_replays" in s] == []
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
        await world.client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_another_tenant_cannot_replay_a_run(settings, workspace):
    model = ScriptedModel([ScriptedModel.answer("done")])
    async with live_world(settings, scripted=model) as world:
        await register(world.platform, agent_document())
        source = await _run(world, workspace)
        await world.tenant("acme")
        response = await world.as_("POST", f"/v1/runs/{source}/replay", json={}, tenant="acme")
        assert response.status_code == 404, response.text
        viewer = await world.as_(
            "POST", f"/v1/runs/{source}/replay", json={}, principal="user:v", roles=["viewer"]
        )
        assert viewer.status_code == 403, viewer.text


async def test_an_agent_may_not_name_the_replay_provider(settings):
    async with live_world(settings) as world:
        document = agent_document(model={"default": "replay/run_x"})
        response = await world.as_("POST", "/v1/apply", json={"documents": [document]})
        assert response.status_code == 422
        assert "reserved for `corral runs replay`" in response.text


async def test_the_replay_provider_serves_a_run_only_its_own_tenants_recording(settings, workspace):
    model = ScriptedModel([ScriptedModel.answer("done")])
    async with live_world(settings, scripted=model) as world:
        await register(world.platform, agent_document())
        source = await _run(world, workspace)
        request = ModelRequest(model="", messages=[Message("user", "hi")])
        gateway = world.platform.models
        with pytest.raises(ModelAPIError, match="replayed runs only"):
            await gateway.complete([f"replay/{source}"], request, tenant_id="default")
        with pytest.raises((NotFound, ModelAPIError)):
            await gateway.complete(
                [f"replay/{source}"], request, tenant_id="acme", run_id="run_acme"
            )
        _, response = await gateway.complete(
            [f"replay/{source}"], request, tenant_id="default", run_id="run_own"
        )
        assert response.decision == FinalAnswer("done")
