"""A fake OpenAI-compatible upstream: ``POST /v1/chat/completions`` with scripted replies.

It serves on 127.0.0.1 with an ephemeral port, in a thread of its own (so it answers while
the test's event loop waits on the client), and records every request body.

```python
from corral.testing import FakeOpenAIUpstream, UpstreamReply

with FakeOpenAIUpstream([UpstreamReply.error(500)], answer="hello") as upstream:
    ...  # point a deployment at upstream.base_url: the 1st call gets HTTP 500, the rest "hello"
assert upstream.request_count == 2
```
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from corral.testing._http import ThreadedHTTPServer

__all__ = ["FakeOpenAIUpstream", "UpstreamReply"]


@dataclass(frozen=True)
class UpstreamReply:
    """One scripted reply.

    Attributes:
        status: HTTP status.
        body: JSON body; ``None``: a chat completion answering ``text``.
        headers: Extra response headers (``Retry-After``...).
        text: The answer's text when ``body`` is ``None``.
    """

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    text: str = "ok"

    @classmethod
    def error(cls, status: int, *, retry_after: str | None = None) -> UpstreamReply:
        """An OpenAI-style error reply, with ``Retry-After`` if given."""
        body = {"error": {"message": f"scripted HTTP {status}", "type": "server_error"}}
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(status, body, headers)

    @classmethod
    def answer(cls, text: str) -> UpstreamReply:
        """A chat completion whose message content is ``text``."""
        return cls(text=text)


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


class FakeOpenAIUpstream(ThreadedHTTPServer):
    """An OpenAI-wire server answering from a script, then with ``answer``.

    Args:
        replies: Replies to the first calls, in order.
        answer: The text of every later reply.
        name: A label for messages (e.g. the region it stands for).
    """

    def __init__(
        self, replies: list[UpstreamReply] | None = None, *, answer: str = "ok", name: str = "fake"
    ) -> None:
        super().__init__(thread_name=f"fake-upstream-{name}")
        self.replies = list(replies or [])
        self.answer = answer
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    @property
    def request_count(self) -> int:
        """Chat completion requests received."""
        return len(self.requests)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"{self._url}/v1"

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamReply:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if self.replies:
                return self.replies.pop(0)
        return UpstreamReply.answer(self.answer)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read ``requests`` instead."""

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                body = json.loads(raw or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}}, {})
                    return
                reply = upstream._next(body, {k.lower(): v for k, v in self.headers.items()})
                payload = reply.body
                if payload is None:
                    payload = _completion(str(body.get("model", "fake")), reply.text)
                self._send(reply.status, payload, reply.headers)

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
