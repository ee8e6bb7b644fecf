"""The raw OpenAI-wire client (gateway/models/_passthrough.py) against a real local upstream."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pydantic_core
import pytest

from corral.errors import ModelAPIError
from corral.gateway.models import WireChat
from corral.gateway.models._passthrough import _lines
from corral.testing import FakeChatUpstream

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_lines_split_on_every_line_end_across_chunks() -> None:
    chunks = _chunks(b"data: a\r", b"\ndata: b\rdata: ", b"c\n\nda", b"ta: \xc3", b"\xa9\ntail")
    lines = [line async for line in _lines(chunks)]
    assert [line for line in lines if line] == ["data: a", "data: b", "data: c", "data: é", "tail"]


async def test_a_stream_with_a_line_over_128_kib_arrives_whole() -> None:
    word = "x" * 300_000
    with FakeChatUpstream(reply=lambda body: {"content": word}) as upstream:
        wire = WireChat("openai", upstream.base_url, "k", timeout_seconds=30)
        try:
            stream = await wire.stream(BODY, forward_usage=True)
            events = [event async for event in stream.events()]
        finally:
            await wire.aclose()
    chunks = [pydantic_core.from_json(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == word
    assert events[-1] == b"data: [DONE]\n\n"
    assert stream.finished and stream.usage is not None and not stream.malformed


async def test_a_call_reuses_its_connection_and_sends_the_key() -> None:
    with FakeChatUpstream() as upstream:
        wire = WireChat("openai", upstream.base_url, "k", timeout_seconds=30)
        try:
            for _ in range(3):
                parsed, content = await wire.create(BODY)
                assert parsed["object"] == "chat.completion"
                assert pydantic_core.from_json(content) == parsed
        finally:
            await wire.aclose()
        assert upstream.request_count == 3
        assert len(upstream.clients) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unreachable_upstream_is_a_retryable_model_api_error(stream: bool) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wire = WireChat("openai", f"http://127.0.0.1:{port}/v1", None, timeout_seconds=5)
    try:
        with pytest.raises(ModelAPIError, match="could not be reached") as raised:
            if stream:
                await wire.stream(BODY, forward_usage=False)
            else:
                await wire.create(BODY)
    finally:
        await wire.aclose()
    assert raised.value.retryable and raised.value.status_code is None


async def test_an_error_status_keeps_its_status_and_body() -> None:
    with FakeChatUpstream(status=429) as upstream:
        wire = WireChat("openai", upstream.base_url, None, timeout_seconds=30)
        try:
            with pytest.raises(ModelAPIError, match="fake upstream failure") as raised:
                await wire.stream(BODY, forward_usage=False)
        finally:
            await wire.aclose()
    assert raised.value.status_code == 429 and raised.value.retryable


@pytest.mark.parametrize("stream", [False, True])
async def test_http_proxy_from_the_environment_carries_the_call(
    stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream's host does not resolve: only the proxy (the fake upstream) can answer.
    with FakeChatUpstream() as proxy:
        for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.removesuffix("/v1"))
        wire = WireChat("openai", "http://upstream.invalid/v1", "k", timeout_seconds=30)
        try:
            if stream:
                events = [e async for e in (await wire.stream(BODY, forward_usage=True)).events()]
                assert events[-1] == b"data: [DONE]\n\n"
            else:
                parsed, _ = await wire.create(BODY)
                assert parsed["object"] == "chat.completion"
        finally:
            await wire.aclose()
        assert proxy.request_count == 1
