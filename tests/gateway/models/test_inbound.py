"""``InboundChat`` in-process: group-committed records, deferred records, a stream the client
leaves, and the usage mapping. The upstream is :class:`corral.testing.FakeChatUpstream`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, cast

import pytest
from pydantic import SecretStr
from sqlalchemy import Table, func, select

from conftest import register
from corral.api.openai_compat import openai_error
from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.errors import (
    BudgetExceeded,
    InvalidRequest,
    ModelAPIError,
    PolicyDenied,
    QuotaExceeded,
)
from corral.gateway.models import (
    InboundChat,
    RecordWriter,
    Reservation,
    Served,
    Usage,
    usage_of,
)
from corral.observability import sample_value
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
from corral.resilience import CircuitBreakers
from corral.settings import Settings
from corral.tenancy import Principal
from corral.testing import FakeChatUpstream

pytestmark = pytest.mark.timeout(120)

_EVENTS = cast(Table, AuditEventRow.__table__)
_DECISIONS = cast(Table, PolicyDecisionRow.__table__)
SERVICE = Principal(
    id="service:byo", tenant_id="default", roles=frozenset({"builder"}), kind="service"
)
BODY = json.dumps(
    {"model": "openai/gpt-test", "messages": [{"role": "user", "content": "hi"}]}
).encode()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeChatUpstream]:
    with FakeChatUpstream() as fake:
        yield fake


@pytest.fixture
async def platform(settings: Settings, upstream: FakeChatUpstream) -> AsyncIterator[Platform]:
    openai_settings = settings.openai.model_copy(
        update={"base_url": upstream.base_url, "api_key": SecretStr("k")}
    )
    governance = settings.governance.model_copy(update={"policy_refresh_seconds": 0})
    platform = Platform(
        settings.model_copy(update={"openai": openai_settings, "governance": governance})
    )
    await platform.start()
    yield platform
    await platform.close()


def inbound(platform: Platform, **options: Any) -> InboundChat:
    return InboundChat(
        platform.store, platform.models, platform.governance, platform.tracing, **options
    )


def token_sum(labels: dict[str, str], kind: str) -> float:
    name = "gen_ai_client_token_usage_sum"
    return sample_value(name, {**labels, "gen_ai_token_type": kind})


async def count(platform: Platform, table: Table, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    async with platform.store.read("default") as session:
        return int((await session.execute(query)).scalar_one())


async def test_concurrent_calls_are_each_recorded_and_the_chain_verifies(
    platform: Platform,
) -> None:
    chat = inbound(platform)
    replies = await asyncio.gather(*(chat.complete(SERVICE, BODY) for _ in range(20)))
    await chat.aclose()
    assert len({reply.trace_id for reply in replies}) == 20
    assert await count(platform, _EVENTS, action="model.call", outcome="completed") == 20
    assert await count(platform, _DECISIONS, action="model.call") == 20
    async with platform.store.read("default") as session:
        assert (await verify_chain(session, tenant_id="default")).ok


async def test_deferred_records_are_written_after_the_answer(platform: Platform) -> None:
    chat = inbound(platform, defer_records=True)
    reply = await chat.complete(SERVICE, BODY)
    assert reply.content is not None and b"chat.completion" in reply.content
    await chat.aclose()  # waits for the batch
    assert await count(platform, _EVENTS, action="model.call", trace_id=reply.trace_id) == 1


async def test_a_stream_the_client_leaves_is_still_recorded(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    chat = inbound(platform)
    body = json.loads(BODY) | {"stream": True}
    reply = await chat.complete(SERVICE, json.dumps(body).encode())
    assert reply.stream is not None
    stream = cast(Any, reply.stream)
    first = await stream.__anext__()
    assert first.startswith(b"data: {")
    await stream.aclose()  # the client went away after one chunk
    await chat.aclose()
    async with platform.store.read("default") as session:
        [event] = (
            await session.execute(select(_EVENTS).where(_EVENTS.c.trace_id == reply.trace_id))
        ).all()
    assert event.outcome == "completed"
    assert event.details["usage_missing"] is True  # the usage chunk never came: flagged
    assert upstream.requests[0]["stream_options"] == {"include_usage": True}


async def test_streams_read_to_the_end_reuse_the_upstream_connection(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    chat = inbound(platform)
    body = json.dumps(json.loads(BODY) | {"stream": True}).encode()
    for _ in range(3):
        reply = await chat.complete(SERVICE, body)
        assert reply.stream is not None
        events = [event async for event in reply.stream]
        assert events[-1] == b"data: [DONE]\n\n"
    await chat.aclose()
    assert upstream.request_count == 3
    assert len(upstream.clients) == 1  # one keep-alive connection, not one per stream


def test_usage_of_maps_openai_usage() -> None:
    assert usage_of(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 60},
            "completion_tokens_details": {"reasoning_tokens": 25},
        }
    ) == Usage(100, 40, cache_read_tokens=60, reasoning_tokens=25)
    assert usage_of({"prompt_tokens": -3, "completion_tokens": "7", "prompt_tokens_details": None})
    assert usage_of({"prompt_tokens": -3, "completion_tokens": "7"}) == Usage()
    assert usage_of(None) is None
    assert usage_of([1, 2]) is None


class RecordingCosts:
    """A ``ModelCallCosts`` double: what the costs domain would be asked, in order."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[tuple[str, Any]] = []

    async def reserve(
        self,
        principal: Principal,
        *,
        amount_usd: Decimal | None,
        agent_day_usd: Decimal | None,
    ) -> Reservation:
        if self.refuse:
            raise BudgetExceeded(
                "tenant-day budget 1.00 USD: 0.99 spent, 0.05 reserved for this call",
                limit="cost_usd_per_day",
            )
        self.calls.append(("reserve", (amount_usd, agent_day_usd)))
        return Reservation(Decimal("0.05"), handle="r1")

    async def release(self, reservation: Reservation) -> None:
        self.calls.append(("release", reservation.handle))

    async def settle(
        self,
        reservation: Reservation,
        *,
        principal: Principal,
        served: Served,
        usage: Usage | None,
        cost_usd: Decimal | None,
        trace_id: str,
    ) -> RecordWriter | None:
        self.calls.append(("settle", (usage, cost_usd)))
        return None


async def test_costs_are_reserved_before_and_settled_after(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    costs = RecordingCosts()
    chat = inbound(platform, costs=costs)
    labels = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-test"}
    kinds = ("input", "output", "cache_read", "reasoning")
    before = {k: token_sum(labels, k) for k in kinds}
    cost_before = sample_value("corral_model_cost_usd_total", labels)
    reply = await chat.complete(SERVICE, BODY)
    await chat.aclose()
    assert costs.calls == [
        ("reserve", (None, None)),  # gpt-test has no price
        ("settle", (Usage(12, 5, cache_read_tokens=4, reasoning_tokens=2), None)),
    ]
    # The inbound path records the same metrics as the managed loop.
    assert {k: token_sum(labels, k) - before[k] for k in kinds} == {
        "input": 12,
        "output": 5,
        "cache_read": 4,
        "reasoning": 2,
    }
    # gpt-test has no price: the call is recorded unpriced and no cost is counted.
    assert sample_value("corral_model_cost_usd_total", labels) == cost_before
    async with platform.store.read("default") as session:
        [event] = (
            await session.execute(select(_EVENTS).where(_EVENTS.c.trace_id == reply.trace_id))
        ).all()
    assert "cost_usd" not in event.details  # unpriced


async def test_a_budget_refusal_reaches_no_upstream(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    chat = inbound(platform, costs=RecordingCosts(refuse=True))
    with pytest.raises(BudgetExceeded):
        await chat.complete(SERVICE, BODY)
    await chat.aclose()
    assert upstream.request_count == 0
    assert await count(platform, _EVENTS, action="model.call", outcome="budget_exceeded") == 1


async def test_the_reservation_is_the_estimated_cost_and_a_denial_releases_it(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    await register(
        platform,
        {
            "apiVersion": "corral.dev/v1",
            "kind": "Policy",
            "metadata": {"name": "no-models"},
            "spec": {
                "description": "No model call estimated above 4 cents.",
                "cedar": '@id("cost-cap")\n'
                'forbid (principal, action == Action::"model.call", resource)\n'
                'when { context.estimated_cost_usd.greaterThan(decimal("0.0400")) };\n',
            },
        },
    )
    costs = RecordingCosts()
    chat = inbound(platform, costs=costs)
    with pytest.raises(PolicyDenied) as denied:
        await chat.complete(SERVICE, BODY)
    await chat.aclose()
    # The reservation (0.05 USD) is the decision's estimated_cost_usd: the cap refused it.
    assert "cost-cap" in denied.value.message
    assert [name for name, _ in costs.calls] == ["reserve", "release"]
    assert upstream.request_count == 0


def test_errors_have_openai_shape_status_and_figures() -> None:
    quota = openai_error(
        QuotaExceeded(
            "model_tokens_per_day is used up",
            quota="model_tokens_per_day",
            limit="1000",
            current="1000",
            retry_after_seconds=60,
        )
    )
    assert quota.status_code == 429
    assert quota.headers["retry-after"] == "60"
    body = json.loads(bytes(quota.body))["error"]
    assert (body["type"], body["code"], body["limit"], body["current"]) == (
        "rate_limit_error",
        "quota_exceeded",
        "1000",
        "1000",
    )
    budget = openai_error(BudgetExceeded("over budget", limit="cost_usd_per_day"))
    assert budget.status_code == 429
    assert json.loads(bytes(budget.body))["error"]["code"] == "budget_exceeded"
    upstream = openai_error(ModelAPIError("upstream down", provider="openai"))
    assert upstream.status_code == 502
    assert json.loads(bytes(upstream.body))["error"]["type"] == "api_error"


def alias_document(name: str, *deployments: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"description": f"The {name} alias.", "deployments": list(deployments)},
    }


def alias_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_an_anthropic_deployment_is_skipped_when_another_can_serve(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    openai_deployment = {"provider": "openai", "model": "gpt-test", "base_url": upstream.base_url}
    claude = {"provider": "anthropic", "model": "claude-test"}
    await register(
        platform,
        alias_document("mixed", claude, openai_deployment, claude),
        alias_document("claude-only", claude),
    )
    chat = inbound(platform)
    replies = [await chat.complete(SERVICE, alias_body("mixed")) for _ in range(3)]
    with pytest.raises(InvalidRequest) as refused:
        await chat.complete(SERVICE, alias_body("claude-only"))
    await chat.aclose()
    assert all(reply.content is not None for reply in replies)
    assert upstream.request_count == 3
    assert {r["model"] for r in upstream.requests} == {"gpt-test"}
    assert refused.value.code == "model_not_passthrough"
    assert "'claude-only'" in refused.value.message


async def test_an_open_breaker_keeps_calls_from_a_failing_deployment(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    now = [0.0]
    platform.models.breakers = CircuitBreakers(1, 30.0, clock=lambda: now[0])
    platform.models.region = "eu"  # the failing eu deployment is preferred
    with FakeChatUpstream(status=503) as failing:
        await register(
            platform,
            alias_document(
                "fast",
                {"provider": "openai", "model": "gpt-eu", "base_url": failing.base_url}
                | {"region": "eu"},
                {"provider": "openai", "model": "gpt-us", "base_url": upstream.base_url}
                | {"region": "us"},
            ),
        )
        chat = inbound(platform)
        await chat.complete(SERVICE, alias_body("fast"))  # eu fails: the breaker opens
        await chat.complete(SERVICE, alias_body("fast"))  # eu skipped
        now[0] = 31.0
        await chat.complete(SERVICE, alias_body("fast"))  # half-open: one trial, fails
        await chat.aclose()
        assert failing.request_count == 2
    assert upstream.request_count == 3
    async with platform.store.read("default") as session:
        outcomes = [
            row.outcome
            for row in await session.execute(
                select(_EVENTS).where(_EVENTS.c.action == "model.failover").order_by(_EVENTS.c.seq)
            )
        ]
    assert outcomes == ["failed", "circuit_open", "failed"]


async def test_a_stream_fails_over_while_it_is_being_opened(
    platform: Platform, upstream: FakeChatUpstream
) -> None:
    platform.models.region = "eu"
    with FakeChatUpstream(status=502) as failing:
        await register(
            platform,
            alias_document(
                "fast",
                {"provider": "openai", "model": "gpt-eu", "base_url": failing.base_url}
                | {"region": "eu"},
                {"provider": "openai", "model": "gpt-us", "base_url": upstream.base_url}
                | {"region": "us"},
            ),
        )
        chat = inbound(platform)
        body = json.loads(alias_body("fast")) | {"stream": True}
        reply = await chat.complete(SERVICE, json.dumps(body).encode())
        assert reply.stream is not None
        events = [event async for event in reply.stream]
        await chat.aclose()
        assert failing.request_count == 1
    assert upstream.request_count == 1
    assert events[-1] == b"data: [DONE]\n\n"
    assert len(events) > 1  # the answer's chunks, then [DONE]
    assert upstream.requests[0]["model"] == "gpt-us"
    async with platform.store.read("default") as session:
        [event] = (
            await session.execute(
                select(_EVENTS).where(
                    _EVENTS.c.trace_id == reply.trace_id, _EVENTS.c.action == "model.call"
                )
            )
        ).all()
    assert (event.outcome, event.details["deployment"]) == ("completed", "fast#1")
    assert event.details["usage_missing"] is False
