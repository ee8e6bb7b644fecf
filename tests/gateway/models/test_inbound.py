"""``InboundChat`` in-process: group-committed records, deferred records, a stream the client
leaves, and the usage mapping. The upstream is :class:`corral.testing.FakeChatUpstream`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from pydantic import SecretStr
from sqlalchemy import Table, func, select

from corral.audit import verify_chain
from corral.audit._tables import AuditEventRow
from corral.gateway.models import InboundChat, Usage, usage_of
from corral.platform import Platform
from corral.policy._tables import PolicyDecisionRow
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
    platform = Platform(settings.model_copy(update={"openai": openai_settings}))
    await platform.start()
    yield platform
    await platform.close()


def inbound(platform: Platform, **options: Any) -> InboundChat:
    return InboundChat(
        platform.store, platform.models, platform.governance, platform.tracing, **options
    )


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
