"""Idle connections outlive the clients' connection pools.

httpx (and so the ``openai`` and ``anthropic`` SDKs) keeps an idle connection for 5 s, as long as
uvicorn's default keep-alive: a request sent on such a connection just as the server closes it
fails with "Server disconnected without sending a response" (the PostgreSQL soak test saw one on
a loaded CI machine). Corral's servers keep idle connections for ``api.keep_alive_seconds``.
"""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from corral.settings import Settings
from corral.testing import serve_in_thread

IDLE_SECONDS = 6.0
"""Longer than uvicorn's default keep-alive (5 s) and httpx's pool expiry (5 s)."""


def test_the_server_keeps_idle_connections_longer_than_client_pools_do() -> None:
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None
    assert Settings().api.keep_alive_seconds > expiry


def test_a_connection_idle_past_uvicorns_default_still_answers() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def get(connection: socket.socket, path: str) -> bytes:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        received = b""
        while not received.endswith(path.encode()):
            chunk = connection.recv(65536)
            if not chunk:
                return received  # closed by the server
            received += chunk
        return received

    with serve_in_thread(app) as url:  # type: ignore[arg-type]
        address = urlsplit(url)
        assert address.hostname is not None and address.port is not None
        with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
            assert get(connection, "/first").startswith(b"HTTP/1.1 200")
            time.sleep(IDLE_SECONDS)  # idle: uvicorn's default would close the connection at 5 s
            assert get(connection, "/second").startswith(b"HTTP/1.1 200")
