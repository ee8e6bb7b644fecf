"""A fake OpenAI-wire chat completions upstream on 127.0.0.1, for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` (JSON and SSE streaming with
``stream_options.include_usage``) the way OpenAI does, records every request it receives,
and answers what a reply function says (text or ``tool_calls``), with a fixed usage block
(cached and reasoning token details included).

```python
with FakeChatUpstream() as upstream:
    settings.openai.base_url = upstream.base_url
    ...
    assert upstream.request_count == 1
```
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["DEFAULT_USAGE", "FakeChatUpstream", "ReplyFunction"]

ReplyFunction = Callable[[dict[str, Any]], dict[str, Any]]
"""``request body -> assistant message`` (``{"content": ...}`` or ``{"tool_calls": [...]}``)."""

DEFAULT_USAGE: dict[str, Any] = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
"""The usage every answer reports unless told otherwise."""


def _hello(body: dict[str, Any]) -> dict[str, Any]:
    return {"content": "Hello from the fake upstream."}


class FakeChatUpstream:
    """An OpenAI-compatible chat completions server in a background thread.

    Args:
        reply: Decides each answer from the request body; by default a fixed greeting.
        usage: The usage block of every answer; ``None`` sends none.
        stream_usage: Send the usage-only last chunk when a stream asks for it.
        malformed_stream: Put an event that is not JSON in every stream (before the end).
        status: An error status to answer every request with (``None``: answer normally).

    Attributes:
        requests: Every request body received, oldest first.
        clients: Every client address (``host:port``) requests came from: one per TCP
            connection, so a client that reuses its connections leaves few.
        base_url: ``http://127.0.0.1:<port>/v1`` once started.
    """

    def __init__(
        self,
        *,
        reply: ReplyFunction | None = None,
        usage: dict[str, Any] | None = DEFAULT_USAGE,
        stream_usage: bool = True,
        malformed_stream: bool = False,
        status: int | None = None,
    ) -> None:
        self.reply = reply or _hello
        self.usage = usage
        self.stream_usage = stream_usage
        self.malformed_stream = malformed_stream
        self.status = status
        self.requests: list[dict[str, Any]] = []
        self.clients: set[str] = set()
        self.base_url = ""
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    @property
    def request_count(self) -> int:
        """How many chat completions requests arrived."""
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> FakeChatUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, startup_timeout_seconds: float = 20.0) -> str:
        """Serve on a free port of 127.0.0.1; returns :attr:`base_url`.

        Raises:
            RuntimeError: the server did not start in time.
        """
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name=f"fake-chat-upstream:{port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + startup_timeout_seconds
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the fake chat upstream on 127.0.0.1:{port} did not start")
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=20)
        self._server = self._thread = None

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        with self._lock:
            self.requests.append(body)
            if request.client is not None:
                self.clients.add(f"{request.client.host}:{request.client.port}")
        if self.status is not None:
            return JSONResponse(
                {"error": {"message": "fake upstream failure", "type": "server_error"}},
                status_code=self.status,
            )
        message = self.reply(body)
        model = body.get("model", "fake")
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return StreamingResponse(
                self._chunks(model, message, bool(options.get("include_usage"))),
                media_type="text/event-stream",
            )
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, **message},
                    "finish_reason": finish,
                }
            ],
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        return JSONResponse(answer)

    async def _chunks(
        self, model: str, message: dict[str, Any], include_usage: bool
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        content = message.get("content") or ""
        words = content.split(" ")
        for index, word in enumerate(words):
            if word or len(words) == 1:
                yield chunk({"content": word if index == 0 else f" {word}"})
        for index, call in enumerate(message.get("tool_calls") or []):
            yield chunk({"tool_calls": [{"index": index, **call}]})
        if self.malformed_stream:
            yield b"data: {this is not json\n\n"
        yield chunk({}, "tool_calls" if message.get("tool_calls") else "stop")
        if include_usage and self.stream_usage and self.usage is not None:
            last = json.loads(chunk(None)[6:])
            last["usage"] = self.usage
            yield b"data: " + json.dumps(last).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
