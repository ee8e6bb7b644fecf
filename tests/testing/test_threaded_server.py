"""The base of corral.testing's threaded HTTP servers: a free port, serving until stopped."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from corral.testing._http import ThreadedHTTPServer


class Teapot(ThreadedHTTPServer):
    def __init__(self) -> None:
        super().__init__(thread_name="teapot")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(418)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler


def test_it_serves_on_a_free_port_until_the_block_ends() -> None:
    teapot = Teapot()
    with pytest.raises(RuntimeError, match="Teapot is not started"):
        _ = teapot._url
    with teapot as started, Teapot() as other:
        assert started is teapot
        assert teapot._url.startswith("http://127.0.0.1:") and teapot._url != other._url
        assert httpx.get(teapot._url).status_code == 418
    with pytest.raises(httpx.ConnectError):
        httpx.get(teapot._url)  # the socket is closed
    teapot.stop()  # idempotent
