"""A real Corral API server for tests: uvicorn in a background thread on a free local port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from corral.settings import ApiSettings

__all__ = ["serve_in_thread"]

_KEEP_ALIVE_SECONDS = ApiSettings().keep_alive_seconds


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, *, host: str = "127.0.0.1", startup_timeout_seconds: float = 20.0
) -> Iterator[str]:
    """Serve ``app`` (with its lifespan) until the block ends; yields its base URL.

    For tests that drive the CLI or an HTTP client against a live server.

    Raises:
        RuntimeError: the server did not start within ``startup_timeout_seconds``.
    """
    port = _free_port(host)
    # Idle connections outlive an httpx client's pool expiry (5 s), as with `corral up`: a loaded
    # machine must not turn uvicorn's 5 s default into a disconnect in the middle of a test.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_keep_alive=_KEEP_ALIVE_SECONDS
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"corral-test-server:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_seconds
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"the test server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
