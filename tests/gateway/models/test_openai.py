"""The OpenAI-compatible provider against a real HTTP server that records what it receives."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import pytest
from pydantic import SecretStr

from corral.errors import ModelAPIError
from corral.gateway.models import (
    FinalAnswer,
    Message,
    ModelProvider,
    ModelRequest,
    OpenAICompatibleProvider,
    ToolCall,
    ToolDefinition,
    Usage,
    decision_instructions,
    decision_schema,
)
from corral.settings import OpenAISettings

READ_FILE = ToolDefinition(
    name="fs.read_file",
    description="Read a text file.",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
)
LIST_DIR = ToolDefinition(
    name="fs.list_dir",
    description="List a directory.",
    input_schema={"type": "object", "properties": {"path": {"type": "string"}}},
)
TOOLS = [READ_FILE, LIST_DIR]

HISTORY = [
    Message("system", "You are a careful agent."),
    Message("user", "What does notes.txt say?"),
    Message(
        "assistant",
        "",
        tool_calls=(ToolCall("call_a", "fs.read_file", {"path": "notes.txt"}),),
    ),
    Message("tool", "buy milk", tool_call_id="call_a"),
]


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    delay_seconds: float = 0.0


@dataclass
class RecordingServer:
    """Records every request body; answers with the queued replies in order."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def completion(
    message: dict[str, Any], *, usage: dict[str, int] | None = None, model: str = "test-model"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    state = RecordingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            state.received.append(json.loads(self.rfile.read(length)))
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            state.paths.append(self.path)
            reply = state.replies.pop(0) if state.replies else Reply(500, "no reply queued")
            time.sleep(reply.delay_seconds)
            data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            try:
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data.encode())))
                self.end_headers()
                self.wfile.write(data.encode())
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_provider(
    server: RecordingServer,
    tool_calling: Literal["native", "json"],
    *,
    timeout_seconds: float = 10.0,
) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        "testprov",
        base_url=server.url,
        api_key="sk-test",
        tool_calling=tool_calling,
        timeout_seconds=timeout_seconds,
        max_output_tokens=77,
    )


@pytest.fixture
async def json_provider(server: RecordingServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = make_provider(server, "json")
    yield provider
    await provider.aclose()


@pytest.fixture
async def native_provider(server: RecordingServer) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = make_provider(server, "native")
    yield provider
    await provider.aclose()


def test_is_a_model_provider(json_provider: OpenAICompatibleProvider) -> None:
    assert isinstance(json_provider, ModelProvider)
    assert json_provider.name == "testprov"


# --- json mode ----------------------------------------------------------------------------------


async def test_json_mode_sends_json_object_with_schema_and_no_tools(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(
        Reply(body=completion({"content": '{"final_answer": "buy milk"}'}, usage=usage(120, 9)))
    )
    request = ModelRequest(
        model="smol", messages=HISTORY, tools=TOOLS, temperature=0.3, max_answer_chars=700
    )

    response = await json_provider.complete(request)

    body = server.received[0]
    assert server.paths == ["/v1/chat/completions"]
    assert server.headers[0]["authorization"] == "Bearer sk-test"
    assert body["response_format"] == {
        "type": "json_object",
        "schema": decision_schema(TOOLS, max_answer_chars=700),
    }
    assert "tools" not in body
    assert body["model"] == "smol"
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 77
    assert response.decision == FinalAnswer("buy milk")
    assert response.raw == '{"final_answer": "buy milk"}'
    assert response.error is None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (120, 9)
    assert response.response_model == "test-model"


async def test_json_mode_renders_history_without_tool_roles(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": '{"final_answer": "ok"}'})))

    await json_provider.complete(ModelRequest(model="smol", messages=HISTORY, tools=TOOLS))

    assert server.received[0]["messages"] == [
        {
            "role": "system",
            "content": "You are a careful agent.\n\n" + decision_instructions(TOOLS),
        },
        {"role": "user", "content": "What does notes.txt say?"},
        {
            "role": "assistant",
            "content": '{"tool": "fs.read_file", "arguments": {"path": "notes.txt"}}',
        },
        {"role": "user", "content": "Tool result for call call_a (fs.read_file):\nbuy milk"},
    ]


async def test_json_mode_merges_consecutive_turns_and_adds_a_system_message(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": '{"final_answer": "ok"}'})))
    messages = [
        Message("user", "Read a and b."),
        Message(
            "assistant",
            "",
            tool_calls=(
                ToolCall("c1", "fs.read_file", {"path": "a"}),
                ToolCall("c2", "fs.read_file", {"path": "b"}),
            ),
        ),
        Message("tool", "A", tool_call_id="c1"),
        Message("tool", "B", tool_call_id="c2"),
    ]

    await json_provider.complete(ModelRequest(model="smol", messages=messages, tools=TOOLS))

    sent = server.received[0]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == decision_instructions(TOOLS)
    assert sent[2]["content"] == (
        '{"tool": "fs.read_file", "arguments": {"path": "a"}}\n'
        '{"tool": "fs.read_file", "arguments": {"path": "b"}}'
    )
    assert sent[3]["content"] == (
        "Tool result for call c1 (fs.read_file):\nA\n\nTool result for call c2 (fs.read_file):\nB"
    )


async def test_json_mode_parses_a_tool_call(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    raw = '{"tool": "fs.list_dir", "arguments": {"path": "."}}'
    server.replies.append(Reply(body=completion({"content": raw})))

    response = await json_provider.complete(
        ModelRequest(model="smol", messages=HISTORY, tools=TOOLS)
    )

    assert response.decision == [ToolCall("call_0", "fs.list_dir", {"path": "."})]
    assert response.raw == raw


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"tool": "fs.list_dir", "argu', "not valid JSON"),
        ('{"tool": "fs.delete", "arguments": {}}', "unknown tool 'fs.delete'"),
        (None, "not valid JSON"),
    ],
)
async def test_json_mode_invalid_output_is_returned_with_an_error(
    server: RecordingServer,
    json_provider: OpenAICompatibleProvider,
    content: str | None,
    error: str,
) -> None:
    server.replies.append(Reply(body=completion({"content": content})))

    response = await json_provider.complete(
        ModelRequest(model="smol", messages=HISTORY, tools=TOOLS)
    )

    assert response.decision is None
    assert response.raw == (content or "")
    assert response.error is not None and error in response.error


# --- native mode --------------------------------------------------------------------------------


async def test_native_mode_maps_tool_names_and_never_sends_null_content(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": "It says buy milk."})))

    response = await native_provider.complete(
        ModelRequest(model="gpt", messages=HISTORY, tools=TOOLS)
    )

    body = server.received[0]
    assert "response_format" not in body
    assert [t["function"]["name"] for t in body["tools"]] == ["fs__read_file", "fs__list_dir"]
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "fs__read_file",
            "description": "Read a text file.",
            "parameters": READ_FILE.input_schema,
        },
    }
    assert body["messages"] == [
        {"role": "system", "content": "You are a careful agent."},
        {"role": "user", "content": "What does notes.txt say?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "fs__read_file", "arguments": '{"path": "notes.txt"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "buy milk"},
    ]
    assert response.decision == FinalAnswer("It says buy milk.")
    assert response.usage.input_tokens == 0 and response.usage.output_tokens == 0


async def test_native_mode_maps_tool_call_names_back(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    tool_calls = [
        {
            "id": "call_x",
            "type": "function",
            "function": {"name": "fs__read_file", "arguments": '{"path": "a.txt"}'},
        },
        {"id": "call_y", "type": "function", "function": {"name": "fs__list_dir", "arguments": ""}},
    ]
    server.replies.append(
        Reply(body=completion({"content": None, "tool_calls": tool_calls}, usage=usage(50, 12)))
    )

    response = await native_provider.complete(
        ModelRequest(model="gpt", messages=HISTORY[:2], tools=TOOLS)
    )

    assert response.decision == [
        ToolCall("call_x", "fs.read_file", {"path": "a.txt"}),
        ToolCall("call_y", "fs.list_dir", {}),
    ]
    assert json.loads(response.raw) == [
        {"id": "call_x", "tool": "fs.read_file", "arguments": {"path": "a.txt"}},
        {"id": "call_y", "tool": "fs.list_dir", "arguments": {}},
    ]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (50, 12)


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("fs__read_file", '{"path": "a.txt"', "arguments of your call to 'fs.read_file' are not"),
        ("fs__read_file", '["a.txt"]', "must be a JSON object"),
        ("web__search", '{"q": "x"}', "unknown tool 'web__search'"),
    ],
)
async def test_native_mode_bad_tool_calls_are_returned_with_an_error(
    server: RecordingServer,
    native_provider: OpenAICompatibleProvider,
    name: str,
    arguments: str,
    error: str,
) -> None:
    tool_calls = [
        {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
    ]
    server.replies.append(Reply(body=completion({"content": None, "tool_calls": tool_calls})))

    response = await native_provider.complete(
        ModelRequest(model="gpt", messages=HISTORY[:2], tools=TOOLS)
    )

    assert response.decision is None
    assert response.error is not None and error in response.error
    assert json.loads(response.raw)[0]["id"] == "c"


async def test_native_mode_empty_reply_is_an_error(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": ""})))

    response = await native_provider.complete(ModelRequest(model="gpt", messages=HISTORY[:2]))

    assert response.decision is None
    assert response.error is not None and "empty" in response.error


async def test_native_mode_without_tools_sends_no_tools_key(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": "hi"})))

    await native_provider.complete(
        ModelRequest(model="gpt", messages=HISTORY[:2], max_output_tokens=5)
    )

    assert "tools" not in server.received[0]
    assert server.received[0]["max_tokens"] == 5


# --- errors -------------------------------------------------------------------------------------


async def test_http_error_maps_to_model_api_error_without_retry(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(500, {"error": {"message": "Internal failure: grammar"}}))

    with pytest.raises(ModelAPIError) as info:
        await json_provider.complete(ModelRequest(model="smol", messages=HISTORY, tools=TOOLS))

    error = info.value
    assert error.status_code == 500
    assert error.provider == "testprov"
    assert "'testprov'" in error.message
    assert server.url in error.message
    assert "HTTP 500" in error.message
    assert "Internal failure: grammar" in error.message
    assert len(server.received) == 1


async def test_non_json_error_body(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(429, "slow down"))

    with pytest.raises(ModelAPIError) as info:
        await native_provider.complete(ModelRequest(model="gpt", messages=HISTORY[:2]))

    assert info.value.status_code == 429


async def test_timeout_maps_to_model_api_error(server: RecordingServer) -> None:
    server.replies.append(Reply(body=completion({"content": "late"}), delay_seconds=1.0))
    provider = make_provider(server, "native", timeout_seconds=0.2)

    try:
        with pytest.raises(ModelAPIError, match=r"did not answer within 0\.2 s") as info:
            await provider.complete(ModelRequest(model="gpt", messages=HISTORY[:2]))
    finally:
        await provider.aclose()

    assert info.value.status_code is None
    assert len(server.received) == 1


async def test_connection_refused_maps_to_model_api_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider("down", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")

    try:
        with pytest.raises(ModelAPIError, match="could not be reached") as info:
            await provider.complete(ModelRequest(model="gpt", messages=HISTORY[:2]))
    finally:
        await provider.aclose()

    assert info.value.provider == "down"
    assert info.value.status_code is None
    assert f"127.0.0.1:{port}" in info.value.message


async def test_reply_without_choices_is_a_model_api_error(
    server: RecordingServer, native_provider: OpenAICompatibleProvider
) -> None:
    body = completion({"content": "x"})
    body["choices"] = []
    server.replies.append(Reply(body=body))

    with pytest.raises(ModelAPIError, match="no choices"):
        await native_provider.complete(ModelRequest(model="gpt", messages=HISTORY[:2]))


# --- construction -------------------------------------------------------------------------------


async def test_from_settings(server: RecordingServer) -> None:
    settings = OpenAISettings(
        base_url=server.url,
        api_key=SecretStr("sk-settings"),
        tool_calling="json",
        request_timeout_seconds=5,
        max_output_tokens=33,
    )
    server.replies.append(Reply(body=completion({"content": '{"final_answer": "ok"}'})))
    provider = OpenAICompatibleProvider.from_settings(settings)

    try:
        response = await provider.complete(ModelRequest(model="m", messages=HISTORY[:2]))
    finally:
        await provider.aclose()

    assert provider.name == "openai"
    assert provider.tool_calling == "json"
    assert response.decision == FinalAnswer("ok")
    assert server.headers[0]["authorization"] == "Bearer sk-settings"
    assert server.received[0]["max_tokens"] == 33


def test_missing_api_key_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ModelAPIError, match="OPENAI_API_KEY") as info:
        OpenAICompatibleProvider("openai")

    assert "CORRAL_OPENAI__API_KEY" in info.value.message


# --- usage --------------------------------------------------------------------------------------


async def test_cached_and_reasoning_tokens_are_read_from_the_usage_details(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    detailed = {
        **usage(1000, 300),
        "prompt_tokens_details": {"cached_tokens": 640},
        "completion_tokens_details": {"reasoning_tokens": 200},
    }
    server.replies.append(
        Reply(body=completion({"content": '{"final_answer": "ok"}'}, usage=detailed))
    )

    response = await json_provider.complete(ModelRequest(model="smol", messages=HISTORY))

    assert response.usage == Usage(
        input_tokens=1000, output_tokens=300, cache_read_tokens=640, reasoning_tokens=200
    )
    assert response.usage_missing is False


async def test_a_reply_without_usage_is_flagged(
    server: RecordingServer, json_provider: OpenAICompatibleProvider
) -> None:
    server.replies.append(Reply(body=completion({"content": '{"final_answer": "ok"}'})))

    response = await json_provider.complete(ModelRequest(model="smol", messages=HISTORY))

    assert response.usage == Usage()
    assert response.usage_missing is True


# --- decoding and cited sources -----------------------------------------------------------------


async def test_decoding_fields_are_sent_only_when_set(server: RecordingServer) -> None:
    from corral.gateway.models._openai import Decoding

    provider = OpenAICompatibleProvider(
        "testprov",
        base_url=server.url,
        api_key="sk-test",
        tool_calling="json",
        decoding=Decoding(repeat_penalty=1.1, max_answer_chars=300),
    )
    try:
        for _ in range(2):
            server.replies.append(Reply(body=completion({"content": '{"final_answer": "ok"}'})))
        await provider.complete(
            ModelRequest(model="smol", messages=HISTORY, seed=7, frequency_penalty=0.5)
        )
        await provider.complete(
            ModelRequest(
                model="smol", messages=HISTORY, tools=TOOLS, repeat_penalty=1.3, answer_sources=()
            )
        )
    finally:
        await provider.aclose()
    first, second = server.received
    assert (first["seed"], first["frequency_penalty"], first["repeat_penalty"]) == (7, 0.5, 1.1)
    assert first["response_format"]["schema"] == decision_schema([], max_answer_chars=300)
    assert second["repeat_penalty"] == 1.3  # the request's own value wins
    assert "seed" not in second and "frequency_penalty" not in second
    # An agent that must cite and has seen no file yet is not offered a final answer.
    assert second["response_format"]["schema"] == decision_schema(
        TOOLS, max_answer_chars=300, sources=()
    )
    assert '"sources"' in second["messages"][0]["content"]
