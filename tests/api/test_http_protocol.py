"""The server protocol ``corral up`` runs: a response's headers and body leave in one write."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corral.api import http_protocol
from corral.api._http import CoalescingTransport


class RecordingTransport:
    """The little of ``asyncio.Transport`` the proxy uses, with every write recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    real = RecordingTransport()
    proxy = CoalescingTransport(cast(asyncio.Transport, real), asyncio.get_running_loop())
    return proxy, real


async def test_writes_of_one_loop_turn_leave_in_one_write() -> None:
    proxy, real = coalescing()
    proxy.write(b"HTTP/1.1 200 OK\r\n\r\n")
    proxy.write(b"")
    proxy.write(b'{"ok": true}')
    assert real.writes == []  # not yet: the turn has not ended
    await asyncio.sleep(0)
    assert real.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"ok": true}']
    proxy.write(b"next")  # a later turn: its own write
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]
    assert proxy.get_extra_info("peername") == "extra:peername"  # the rest is the transport's


async def test_closing_sends_what_was_gathered_first() -> None:
    proxy, real = coalescing()
    proxy.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    proxy.close()
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert real.closed
    proxy.write(b"late")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]  # nothing after close


async def chunks() -> AsyncIterator[bytes]:
    for index in range(3):
        yield f"data: {index}\n\n".encode()
        await asyncio.sleep(0)


async def answer(request: Request) -> Response:
    return JSONResponse({"echo": (await request.body()).decode()})


async def stream(request: Request) -> Response:
    return StreamingResponse(chunks(), media_type="text/event-stream")


@pytest.fixture
def server() -> Iterator[str]:
    """A Starlette app under uvicorn with Corral's HTTP protocol, in a thread."""
    app = Starlette(routes=[Route("/answer", answer, methods=["POST"]), Route("/stream", stream)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    config.http = cast(Any, http_protocol())
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not served.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        served.should_exit = True
        thread.join(timeout=10)


def test_the_protocol_is_uvicorns_httptools_one() -> None:
    protocol = http_protocol()
    assert not isinstance(protocol, str)
    assert [base.__name__ for base in protocol.__mro__[1:2]] == ["HttpToolsProtocol"]


def test_responses_streams_and_keep_alive_work_through_it(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for index in range(3):  # one keep-alive connection, three answers
            response = client.post("/answer", content=f"call {index}")
            assert response.status_code == 200
            assert response.json() == {"echo": f"call {index}"}
        streamed = client.get("/stream")
        assert streamed.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
        closing = client.post("/answer", content="last", headers={"Connection": "close"})
        assert closing.json() == {"echo": "last"}
        assert closing.headers["connection"] == "close"
