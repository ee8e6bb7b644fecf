"""The Anthropic provider against a local server speaking the Messages API wire format."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from corral.errors import ModelAPIError
from corral.gateway.models import (
    AnthropicProvider,
    FinalAnswer,
    Message,
    ModelRequest,
    ToolCall,
    ToolDefinition,
    Usage,
)


class FakeAnthropic:
    """Answers ``POST /v1/messages`` with the scripted (status, body, headers) in order."""

    def __init__(self, *replies: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body})
                status, payload, headers = fake.replies.pop(0)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[list[FakeAnthropic]]:
    made: list[FakeAnthropic] = []
    yield made
    for server in made:
        server.server.shutdown()
        server.server.server_close()


def _message(content: list[dict[str, Any]], **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test",
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4, **usage},
    }


READ = ToolDefinition("fs.read_file", "Read a file.", {"type": "object"})


async def test_messages_tools_and_usage_map_to_the_messages_api(
    fake: list[FakeAnthropic],
) -> None:
    server = FakeAnthropic(
        (
            200,
            _message(
                [
                    {
                        "type": "tool_use",
                        "id": "tu_2",
                        "name": "fs__read_file",
                        "input": {"path": "b"},
                    }
                ],
                cache_read_input_tokens=100,
                cache_creation_input_tokens=20,
            ),
            {},
        )
    )
    fake.append(server)
    provider = AnthropicProvider(base_url=server.base_url, api_key="sk-ant-test")
    request = ModelRequest(
        model="claude-test",
        messages=[
            Message("system", "Be brief."),
            Message("user", "Read a."),
            Message("assistant", "", (ToolCall("tu_1", "fs.read_file", {"path": "a"}),)),
            Message("tool", "contents of a", tool_call_id="tu_1"),
        ],
        tools=[READ],
        max_output_tokens=50,
    )
    response = await provider.complete(request)
    await provider.aclose()
    assert response.decision == [ToolCall("tu_2", "fs.read_file", {"path": "b"})]
    assert response.usage == Usage(
        input_tokens=130, output_tokens=4, cache_read_tokens=100, cache_write_tokens=20
    )
    [sent] = server.requests
    assert sent["path"] == "/v1/messages"
    body = sent["body"]
    assert (body["model"], body["max_tokens"], body["system"]) == ("claude-test", 50, "Be brief.")
    assert body["tools"] == [
        {"name": "fs__read_file", "description": "Read a file.", "input_schema": {"type": "object"}}
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Read a."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "tu_1", "name": "fs__read_file", "input": {"path": "a"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "contents of a"}],
        },
    ]


async def test_a_text_reply_is_a_final_answer(fake: list[FakeAnthropic]) -> None:
    server = FakeAnthropic((200, _message([{"type": "text", "text": "42"}]), {}))
    fake.append(server)
    provider = AnthropicProvider(base_url=server.base_url, api_key="k")
    response = await provider.complete(ModelRequest(model="m", messages=[Message("user", "?")]))
    await provider.aclose()
    assert (response.decision, response.usage.input_tokens) == (FinalAnswer("42"), 10)


async def test_overloaded_is_retryable_with_retry_after_and_400_is_not(
    fake: list[FakeAnthropic],
) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    bad = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    server = FakeAnthropic((529, error, {"retry-after": "3"}), (400, bad, {}))
    fake.append(server)
    provider = AnthropicProvider(base_url=server.base_url, api_key="k")
    request = ModelRequest(model="m", messages=[Message("user", "?")])
    with pytest.raises(ModelAPIError) as overloaded:
        await provider.complete(request)
    with pytest.raises(ModelAPIError) as refused:
        await provider.complete(request)
    await provider.aclose()
    assert (overloaded.value.status_code, overloaded.value.retryable) == (529, True)
    assert overloaded.value.retry_after_seconds == 3.0
    assert (refused.value.status_code, refused.value.retryable) == (400, False)
