"""Invariant 4, "an agent never sees a raw secret": plant a secret, let a tool use it in a real
run, then search the model context, the store, every API response and the logs for it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from _secrets_world import policy_document, secret_settings_fixture  # noqa: F401
from sqlalchemy import select

from conftest import PrincipalKeys, agent_document, log_lines, register
from corral.api import create_app
from corral.contracts import Tool
from corral.errors import ToolFailed
from corral.gateway.models import ModelRequest, ToolCall
from corral.gateway.tools import BuiltinTool, current_tool_call
from corral.platform import Platform
from corral.runtime import create_run, get_run, list_steps
from corral.secrets import REDACTED
from corral.settings import Settings
from corral.store import SYSTEM, Base
from corral.testing import ScriptedModel

PERMIT_API_TOKEN = policy_document(
    "secrets-for-repo-analyst",
    'permit (principal == Agent::"repo-analyst", action == Action::"secret.use", resource) '
    'when { context has secret && context.secret == "api-token" };',
)


def tool_document(name: str, description: str) -> Tool:
    return Tool.model_validate(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Tool",
            "metadata": {"name": name, "version": "1.0.0"},
            "spec": {"description": description, "side_effect": "read"},
        }
    )


class Upstream:
    """Builtin tools standing in for an API that needs a token, and what they were given."""

    def __init__(self) -> None:
        self.platform: Platform | None = None
        self.seen: list[str] = []

    async def _render(self, template: str) -> str:
        assert self.platform is not None
        rendered, values = await self.platform.secrets.render(
            current_tool_call().tenant_id, template
        )
        self.seen.extend(values)
        return rendered

    async def call_api(self, arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        """Echo the request back the way careless APIs do, in several encodings."""
        header = await self._render("Bearer ${secret:api-token}")
        token = header.removeprefix("Bearer ")
        return json.dumps(
            {
                "query": arguments.get("query"),
                "echo": {"authorization": header},
                "basic": base64.b64encode(f"bot:{token}".encode()).decode(),
                "redirect": f"https://api.example.com/cb?token={quote(token, safe='')}",
                "payload": base64.b64encode(json.dumps({"t": token}).encode()).decode(),
            }
        )

    async def leaky_error(self, _arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        header = await self._render("Bearer ${secret:api-token}")
        raise ToolFailed(f"upstream refused the request with Authorization: {header}")

    async def crashing(self, _arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        token = await self._render("${secret:api-token}")
        raise RuntimeError(f"bug while sending {token!r}")

    async def unpermitted(self, _arguments: dict[str, Any], _ws: Path | None, **_: Any) -> str:
        return await self._render("${secret:other-token}")

    def builtins(self) -> dict[str, BuiltinTool]:
        tools = {
            "test.call_api": (self.call_api, "Calls the upstream API with its token."),
            "test.leaky_error": (self.leaky_error, "Fails, quoting its credentials."),
            "test.crashing": (self.crashing, "Crashes, quoting its credentials."),
            "test.unpermitted": (self.unpermitted, "Uses a secret it may not use."),
        }
        return {
            name: BuiltinTool(tool_document(name, description), run)
            for name, (run, description) in tools.items()
        }


def script(request: ModelRequest) -> Any:
    if any(message.role == "tool" for message in request.messages):
        return ScriptedModel.answer("Done; the API answered.")
    return [
        ToolCall("c1", "test.call_api", {"query": "status"}),
        ToolCall("c2", "test.leaky_error", {}),
        ToolCall("c3", "test.crashing", {}),
        ToolCall("c4", "test.unpermitted", {}),
    ]


def variants(value: str) -> list[str]:
    """The value and the encodings a leak would most likely take."""
    raw = value.encode()
    return [value, base64.b64encode(raw).decode().rstrip("="), raw.hex(), quote(value, safe="")]


def leaks(text: str, values: list[str]) -> list[str]:
    return [v for value in values for v in variants(value) if v in text]


async def dump_database(platform: Platform) -> str:
    """Every row of every table, as JSON text (bytes as latin-1 and hex)."""
    texts = []
    async with platform.store.read(SYSTEM) as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                for value in row.values():
                    if isinstance(value, bytes):
                        texts += [value.decode("latin-1"), value.hex()]
                    else:
                        texts.append(json.dumps(value, default=str, ensure_ascii=False))
    return "\n".join(texts)


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    """The API (with its worker) in this task: the lifespan must end in the task it began in."""
    upstream = Upstream()
    model = ScriptedModel(script)
    platform = Platform(settings, providers={"scripted": model}, builtins=upstream.builtins())
    upstream.platform = platform
    app = create_app(platform)
    platform.upstream, platform.model = upstream, model  # type: ignore[attr-defined]
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://corral",
            auth=PrincipalKeys(platform),
        ) as client,
    ):
        yield platform, client


async def finished_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        if run["status"] not in ("QUEUED", "RUNNING"):
            return dict(run)
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


async def test_a_planted_secret_is_used_by_the_tool_and_found_nowhere_else(
    secret_settings: Settings, caplog: pytest.LogCaptureFixture, json_logs: io.StringIO
) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(secret_settings) as (platform, client):
        planted, run_id = await _plant_and_search(platform, client, caplog)
    # The structured logs, every logger at DEBUG, as production writes them: not a trace of
    # either value, and the run's lines carry its id.
    assert leaks(json_logs.getvalue(), planted) == []
    lines = log_lines(json_logs)
    assert any(line.get("run_id") == run_id for line in lines)
    assert {line["level"] for line in lines} >= {"debug"}


async def _plant_and_search(
    platform: Platform, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> tuple[list[str], str]:
    """Plant two secrets, run an agent whose tools use one; the values and the run's id."""
    value, unrevealed = f"sk-{secrets.token_urlsafe(24)}", f"sk-{secrets.token_urlsafe(24)}"
    responses: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        response = await client.request(method, path, **kwargs)
        assert response.is_success, response.text
        responses.append(response.text)
        return response.json() if response.headers["content-type"].startswith("app") else None

    await call("PUT", "/v1/secrets/api-token", json={"value": value})
    await call("PUT", "/v1/secrets/other-token", json={"value": unrevealed})
    await register(platform, agent_document(tools={"allowed": ["test.*"]}), PERMIT_API_TOKEN)
    run_id = (
        await call(
            "POST", "/v1/agents/repo-analyst/runs", json={"task": "Check it.", "stage": "dev"}
        )
    )["id"]
    run = await finished_run(client, run_id)
    assert (run["status"], run["output"]) == ("SUCCEEDED", "Done; the API answered.")

    # The tool had the real value...
    assert platform.upstream.seen == [value, value, value]  # type: ignore[attr-defined]
    steps = await call("GET", f"/v1/runs/{run_id}/steps")
    calls = {c["tool_name"]: c for c in steps[0]["tool_calls"]}
    # ...and every trace of it in its output and errors was redacted.
    echoed = json.loads(calls["test.call_api"]["output"])
    assert echoed["echo"]["authorization"] == f"Bearer {REDACTED}"
    assert REDACTED in echoed["redirect"] and REDACTED in echoed["payload"]
    assert calls["test.leaky_error"]["error"].endswith(f"Authorization: Bearer {REDACTED}")
    assert calls["test.crashing"]["status"] == "FAILED"
    assert REDACTED in calls["test.crashing"]["error"]
    assert (calls["test.unpermitted"]["status"], calls["test.unpermitted"]["error_type"]) == (
        "DENIED",
        "secret_use_denied",
    )

    await call("GET", f"/v1/runs/{run_id}")
    spans = await call("GET", f"/v1/runs/{run_id}/spans")
    assert "execute_tool test.call_api" in {span["name"] for span in spans}
    events = await client.get(f"/v1/runs/{run_id}/events")
    responses.append(events.text)
    assert "run.finished" in events.text
    audit = await call("GET", "/v1/audit/events", params={"limit": 500})
    listed = await call("GET", "/v1/secrets")
    assert [(s["name"], s["version"]) for s in listed["items"]] == [
        ("api-token", 1),
        ("other-token", 1),
    ]
    assert {e["action"] for e in audit["items"]} >= {"secret.created", "secret.used"}

    planted = [value, unrevealed]
    model = platform.model  # type: ignore[attr-defined]
    context = json.dumps([request.messages for request in model.requests], default=repr)
    assert len(model.requests) == 2 and REDACTED in context
    assert leaks(context, planted) == []
    assert leaks("\n".join(responses), planted) == []
    assert leaks(await dump_database(platform), planted) == []
    logged = caplog.text + "\n".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    assert leaks(logged, planted) == []
    return planted, run_id


async def run_once(platform: Platform) -> str:
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="Check it.",
            requested_by="user:test",
        )
    await platform.worker.run_until_idle()
    async with platform.store.read("default") as session:
        row = await get_run(session, run.id, tenant_id="default")
        steps = await list_steps(session, run.id, tenant_id="default")
    assert row.status == "SUCCEEDED", row.error
    call = steps[0][1][0]
    return f"{call.output} {call.error}"


async def test_rotation_takes_effect_on_the_next_call(secret_settings: Settings) -> None:
    upstream = Upstream()
    platform = Platform(
        secret_settings,
        providers={
            "scripted": ScriptedModel(
                lambda r: (
                    ScriptedModel.answer("done")
                    if any(m.role == "tool" for m in r.messages)
                    else ScriptedModel.call("test.call_api", query="x")
                )
            )
        },
        builtins=upstream.builtins(),
    )
    upstream.platform = platform
    await platform.start()
    try:
        await register(platform, agent_document(tools={"allowed": ["test.*"]}), PERMIT_API_TOKEN)
        await platform.secrets.set("default", "api-token", "first-value-1111", actor="user:a")
        first = await run_once(platform)
        await platform.secrets.set("default", "api-token", "second-value-2222", actor="user:a")
        second = await run_once(platform)
        assert upstream.seen == ["first-value-1111", "second-value-2222"]
        assert "first-value" not in first and "second-value" not in second
        assert REDACTED in first and REDACTED in second

        await platform.secrets.delete("default", "api-token", actor="user:a")
        gone = await run_once(platform)
        assert "Secret 'api-token' is not set" in gone and "corral secrets set api-token" in gone
    finally:
        await platform.close()
