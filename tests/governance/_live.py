"""A live Corral server (uvicorn in a thread, SQLite) for CLI tests, as in tests/cli/test_cli.py.

It runs in the embedded mode: it writes the local admin's key to ``$CORRAL_HOME/admin.key``,
and the CLI (``CORRAL_HOME`` pointed at the server's home) sends it
(:func:`corral.cli._client.auth_headers` gives the same credentials to plain HTTP requests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings, get_settings
from corral.testing import ScriptedModel, serve_in_thread


@contextlib.contextmanager
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Serve Corral with a worker; the CLI is pointed at it through ``CORRAL_API__URL``."""
    model = ScriptedModel(lambda _request: ScriptedModel.answer("done"))
    settings = Settings(home=tmp_path / "home", runtime={"poll_interval_seconds": 0.02})
    app = create_app(Platform(settings, providers={"scripted": model}), local_admin=True)
    with serve_in_thread(app) as url:
        monkeypatch.setenv("CORRAL_API__URL", url)
        monkeypatch.setenv("CORRAL_HOME", str(settings.home))
        monkeypatch.delenv("CORRAL_API_KEY", raising=False)
        monkeypatch.delenv("CORRAL_TENANT", raising=False)
        get_settings.cache_clear()
        try:
            yield url
        finally:
            get_settings.cache_clear()
