"""OTLP export: a governed run's spans reach a collector (a real OTLP/HTTP receiver) as well as
the store, with the GenAI attributes and the parent/child tree of the run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_spans import run_and_spans

from corral.observability import Tracing, otlp_configured
from corral.platform import Platform
from corral.testing import OtlpReceiver, ReceivedSpan, ScriptedModel


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver the standard OTEL_* variables point at (with a header to pass on)."""
    with OtlpReceiver() as started:
        for name, value in started.environ().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-corral-test=otlp%20header")
        yield started


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def governed_run(make_platform: Any, workspace: Path) -> tuple[Platform, Any, Any]:
    model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("42")])
    platform = await make_platform(scripted=model)
    assert platform.tracing.otlp is not None
    run, stored = await run_and_spans(platform, workspace)
    assert run.status == "SUCCEEDED"
    assert platform.tracing.force_flush(10_000)  # no sleeps: the batch is exported now
    return platform, run, stored


async def test_a_governed_runs_spans_reach_the_collector(
    receiver: OtlpReceiver, make_platform: Any, workspace: Path
) -> None:
    _platform, run, stored = await governed_run(make_platform, workspace)
    spans = receiver.spans_of(run.trace_id)

    # The collector gets exactly what the store holds: the same spans, ids and parents.
    assert sorted((s.span_id, s.parent_span_id, s.name) for s in spans) == sorted(
        (s["span_id"], s["parent_span_id"], s["name"]) for s in stored
    )
    assert sorted(s.name for s in spans) == [
        "chat test",
        "chat test",
        "context.build",
        "context.build",
        "execute_tool fs.list_dir",
        "invoke_agent repo-analyst",
        "policy.evaluate",
        "policy.evaluate",
    ]
    assert {s.resource["service.name"] for s in spans} == {"corral"}
    assert {h.get("x-corral-test") for h in receiver.headers} == {"otlp header"}

    # invoke_agent -> chat / execute_tool / context.build / policy.evaluate (model.call);
    # execute_tool -> policy.evaluate (tool.call).
    [root] = by_name(spans, "invoke_agent")
    assert root.parent_span_id is None
    children = {s.name for s in receiver.children(root)}
    assert children == {"chat test", "execute_tool fs.list_dir", "context.build", "policy.evaluate"}
    [tool] = by_name(spans, "execute_tool")
    [tool_decision] = receiver.children(tool)
    [model_decision] = [s for s in by_name(spans, "policy.evaluate") if s is not tool_decision]
    assert model_decision.parent_span_id == root.span_id
    for span in spans:
        assert root.start_time_unix_nano <= span.start_time_unix_nano
        assert span.start_time_unix_nano <= span.end_time_unix_nano <= root.end_time_unix_nano

    # GenAI semantic conventions on the agent, model and tool spans.
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "repo-analyst"
    assert root.attributes["corral.run.id"] == run.id
    assert root.attributes["gen_ai.usage.input_tokens"] == run.input_tokens > 0
    assert root.attributes["gen_ai.usage.output_tokens"] == run.output_tokens > 0
    chats = by_name(spans, "chat ")
    for chat in chats:
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "scripted"
        assert chat.attributes["gen_ai.request.model"] == "test"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert sum(c.attributes["gen_ai.usage.input_tokens"] for c in chats) == run.input_tokens
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "fs.list_dir"

    # The decisions: what was decided, by which policies, for which action.
    assert (
        tool_decision.attributes["corral.policy.action"],
        model_decision.attributes["corral.policy.action"],
    ) == ("tool.call", "model.call")
    for decision in (tool_decision, model_decision):
        assert decision.attributes["corral.policy.decision"] == "allow"
        assert decision.attributes["corral.policy.ids"]  # the permits that allowed it
        assert decision.attributes["corral.policy.decision_id"]
    assert tool_decision.attributes["corral.policy.resource"] == "Tool::fs.list_dir"
    assert tool_decision.attributes["corral.policy.principal"] == "Agent::repo-analyst"

    # The context packets: what each model call was given.
    first, second = sorted(by_name(spans, "context.build"), key=lambda s: s.start_time_unix_nano)
    assert first.attributes["corral.run.id"] == run.id
    assert first.attributes["corral.context.tools"] > 0
    assert (
        second.attributes["corral.context.messages"] > first.attributes["corral.context.messages"]
    )


async def test_spans_queued_for_export_are_flushed_when_the_platform_closes(
    receiver: OtlpReceiver, settings: Any, workspace: Path
) -> None:
    model = ScriptedModel([ScriptedModel.answer("42")])
    platform = Platform(settings, providers={"scripted": model})
    await platform.start()
    try:
        run, stored = await run_and_spans(platform, workspace)
    finally:
        await platform.close()
    assert {s.span_id for s in receiver.spans_of(run.trace_id)} == {s["span_id"] for s in stored}


def test_export_is_off_unless_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not otlp_configured()
    assert Tracing().otlp is None
    assert otlp_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/x"})
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert otlp_configured(endpoint)
    assert not otlp_configured({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not otlp_configured({**endpoint, "OTEL_TRACES_EXPORTER": "none"})


def test_the_traces_endpoint_variable_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "corral-eu-1")
        tracing = Tracing()
        with tracing.tracer.start_as_current_span("invoke_agent test") as span:
            span.set_attribute("gen_ai.operation.name", "invoke_agent")
        tracing.shutdown()
        [received] = receiver.spans
    assert (received.name, received.resource["service.name"]) == (
        "invoke_agent test",
        "corral-eu-1",
    )
    assert received.attributes == {"gen_ai.operation.name": "invoke_agent"}
    assert received.scope == "corral"
