"""Refuse oversized requests before they are read (HTTP 413, RFC 9110 section 15.5.14)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestSizeLimit"]


class RequestSizeLimit:
    """ASGI middleware: 413 for headers or a body larger than the limits.

    The body limit holds for a declared ``Content-Length`` (refused before reading) and for
    chunked bodies (refused once the bytes received pass it).

    Args:
        app: The application.
        max_body_bytes: Largest accepted request body.
        max_header_bytes: Largest accepted total of header names and values.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            await _too_large(send, f"Request headers exceed {self.max_header_bytes} bytes.")
            return
        for key, value in headers:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await _too_large(send, f"Request body exceeds {self.max_body_bytes} bytes.")
                return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            # Answer 413 here rather than raise: FastAPI turns any exception raised while it
            # reads the body into its own 400, so an exception would never reach this middleware.
            nonlocal received, started, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if not started:
                        await _too_large(send, f"Request body exceeds {self.max_body_bytes} bytes.")
                        started = refused = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is sent; the application's own answer is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)


async def _too_large(send: Send, message: str) -> None:
    body = json.dumps({"code": "payload_too_large", "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
