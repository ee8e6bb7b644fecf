"""Header values lose their surrounding whitespace on every route, under the server ``corral up``
runs (uvicorn with httptools, which keeps that whitespace where h11 strips it)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from conftest import key_for
from corral.api import create_app
from corral.api._headers import StripHeaderWhitespace
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import serve_in_thread


def raw_get(url: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """Send a GET with header lines exactly as given (no client tidies them); status and body."""
    address = urlsplit(url)
    assert address.hostname is not None and address.port is not None
    lines = [f"GET {path} HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    lines += [f"{name}:{value}" for name, value in headers]
    with socket.create_connection((address.hostname, address.port), timeout=30) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_server_stack_is_uvicorn_with_httptools() -> None:
    """``corral up`` and ``serve_in_thread`` leave uvicorn's ``http`` option at ``auto``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Never called."""

    config = uvicorn.Config(app)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"


def test_padded_header_values_work_on_a_normal_route(settings: Settings) -> None:
    with serve_in_thread(create_app(Platform(settings), run_worker=False)) as url:
        key = key_for(settings, "user:alice", ["viewer"])
        listed = (200, b'{"items":[],"next":null}')
        assert raw_get(url, "/v1/agents", [("Authorization", f" Bearer {key}")]) == listed
        # Read as "default\t " the tenant would be another one, which this key may not act in.
        padded = [("Authorization", f"  Bearer {key}  "), ("X-Corral-Tenant", " default\t ")]
        assert raw_get(url, "/v1/agents", padded) == listed


async def test_values_without_surrounding_whitespace_pass_through_uncopied() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["headers"])

    middleware = StripHeaderWhitespace(app)
    tidy = [(b"x-corral-tenant", b"default"), (b"mcp-name", b"a b"), (b"x-empty", b"")]
    padded = [(b"x-corral-tenant", b"default"), (b"mcp-name", b"\ta b ")]
    for headers in (tidy, padded):
        await middleware({"type": "http", "headers": headers}, None, None)  # type: ignore[arg-type]
    assert seen[0] is tidy
    assert seen[1] == [(b"x-corral-tenant", b"default"), (b"mcp-name", b"a b")]
