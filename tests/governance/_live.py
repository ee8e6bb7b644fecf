"""A live Corral server (uvicorn in a thread, SQLite) for CLI tests, as in tests/cli/test_cli.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings, get_settings
from corral.testing import ScriptedModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Serve Corral with a worker; the CLI is pointed at it through ``CORRAL_API__URL``."""
    model = ScriptedModel(lambda _request: ScriptedModel.answer("done"))
    settings = Settings(home=tmp_path / "home", runtime={"poll_interval_seconds": 0.02})
    port = _free_port()
    config = uvicorn.Config(
        create_app(Platform(settings, providers={"scripted": model})),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    monkeypatch.setenv("CORRAL_API__URL", url)
    monkeypatch.delenv("CORRAL_PRINCIPAL", raising=False)
    get_settings.cache_clear()
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        get_settings.cache_clear()
