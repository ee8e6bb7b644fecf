from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from conftest import agent_document, register
from corral.errors import ModelAPIError
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.observability._tables import SpanRow
from corral.platform import Platform
from corral.runtime import create_run, get_run, list_run_spans
from corral.runtime._tables import RunRow
from corral.testing import ScriptedModel


async def run_and_spans(platform: Platform, workspace: Path) -> tuple[RunRow, list[dict[str, Any]]]:
    await register(platform, agent_document())
    async with platform.store.transaction("default") as session:
        run = await create_run(
            session,
            tenant_id="default",
            agent_name="repo-analyst",
            task="What?",
            requested_by="user:test",
            workspace=str(workspace),
            workspaces=platform.workspaces,
        )
    await platform.worker.run_until_idle()
    async with platform.store.transaction("default") as session:
        run = await get_run(session, run.id, tenant_id="default")
        spans = await list_run_spans(session, run.id, tenant_id="default")
    return run, spans


def named(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(prefix)]


async def test_run_is_one_trace_of_genai_spans(make_platform, workspace) -> None:
    model = ScriptedModel(
        [
            ScriptedModel.call("fs.list_dir", path="."),
            ScriptedModel.call("fs.read_file", path="../outside.txt"),
            ScriptedModel.answer("42"),
        ]
    )
    platform = await make_platform(scripted=model)
    run, spans = await run_and_spans(platform, workspace)
    assert run.status == "SUCCEEDED"
    # 1 agent + 3 chat + 2 tool + 3 context packets + 2 policy decisions (the model.call,
    # decided once per run segment, and fs.list_dir's tool.call: the path outside the
    # workspace is refused before any decision).
    assert len(spans) == 11
    assert len(named(spans, "context.build")) == 3
    assert len(named(spans, "policy.evaluate")) == 2

    [root] = named(spans, "invoke_agent")
    assert root["name"] == "invoke_agent repo-analyst"
    assert root["parent_span_id"] is None
    attributes = root["attributes"]
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "repo-analyst"
    assert attributes["corral.run.id"] == run.id
    assert attributes["corral.run.status"] == "SUCCEEDED"
    assert attributes["gen_ai.usage.input_tokens"] == run.input_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == run.output_tokens > 0
    assert root["status"] != "ERROR"

    chats = named(spans, "chat ")
    assert [s["name"] for s in chats] == ["chat test"] * 3
    for chat in chats:
        a = chat["attributes"]
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "scripted"
        assert a["gen_ai.request.model"] == "test"
        for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
            assert isinstance(a[key], int) and not isinstance(a[key], bool)
            assert a[key] > 0
        assert a["corral.run.id"] == run.id
    assert sum(c["attributes"]["gen_ai.usage.input_tokens"] for c in chats) == run.input_tokens

    listing, failing = named(spans, "execute_tool")
    assert listing["name"] == "execute_tool fs.list_dir"
    assert listing["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert listing["attributes"]["gen_ai.tool.name"] == "fs.list_dir"
    assert listing["attributes"]["gen_ai.tool.call.id"] == "call_0"
    assert listing["attributes"]["corral.tool.status"] == "COMPLETED"
    assert "error.type" not in listing["attributes"]
    assert failing["name"] == "execute_tool fs.read_file"
    assert failing["attributes"]["error.type"] == "path_outside_workspace"
    assert failing["attributes"]["corral.tool.status"] == "FAILED"
    assert failing["status"] == "ERROR"

    # One trace, the run's; every other span is a direct child of the agent span, but a tool
    # call's decision, which is its execute_tool span's child.
    assert {s["trace_id"] for s in spans} == {run.trace_id}
    assert len({s["span_id"] for s in spans}) == len(spans)
    [model_decision, tool_decision] = sorted(
        named(spans, "policy.evaluate"), key=lambda s: s["attributes"]["corral.policy.action"]
    )
    assert model_decision["attributes"]["corral.policy.action"] == "model.call"
    assert tool_decision["parent_span_id"] == listing["span_id"]
    for span in spans:
        if span is not root:
            parent = listing if span is tool_decision else root
            assert span["parent_span_id"] == parent["span_id"]
            assert root["start_time"] <= span["start_time"] <= span["end_time"]
            assert span["end_time"] <= root["end_time"]


async def test_spans_are_stored_with_the_run_and_tenant(make_platform, workspace) -> None:
    model = ScriptedModel([ScriptedModel.answer("42")])
    platform = await make_platform(scripted=model)
    run, spans = await run_and_spans(platform, workspace)
    async with platform.store.transaction("default") as session:
        rows = list((await session.execute(select(SpanRow))).scalars())
    assert {(r.run_id, r.tenant_id, r.trace_id) for r in rows} == {
        (run.id, "default", run.trace_id)
    }
    assert sorted(r.span_id for r in rows) == sorted(s["span_id"] for s in spans)
    assert all(len(r.span_id) == 16 and len(r.trace_id) == 32 for r in rows)


async def test_model_error_is_marked_on_chat_and_agent_spans(make_platform, workspace) -> None:
    def broken(_request: ModelRequest) -> FinalAnswer:
        raise ModelAPIError("rate limited", provider="scripted", status_code=429)

    platform = await make_platform(scripted=ScriptedModel(broken))
    run, spans = await run_and_spans(platform, workspace)
    assert run.status == "FAILED"
    [root] = named(spans, "invoke_agent")
    [chat] = named(spans, "chat ")
    assert (chat["status"], chat["attributes"]["error.type"]) == ("ERROR", "model_api_error")
    assert (root["status"], root["attributes"]["error.type"]) == ("ERROR", "model_error")
    assert root["attributes"]["corral.run.status"] == "FAILED"
