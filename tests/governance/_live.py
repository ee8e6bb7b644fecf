"""A live Corral server (uvicorn in a thread, SQLite) for CLI tests (the ``cli_server`` fixture).

It runs in the embedded mode: it writes the local admin's key to ``$CORRAL_HOME/admin.key``,
and the CLI (``CORRAL_HOME`` pointed at the server's home) sends it
(:func:`corral.cli._client.auth_headers` gives the same credentials to plain HTTP requests).
"""

from __future__ import annotations

from pathlib import Path

from conftest import CliServer
from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel


def serve(tmp_path: Path, cli_server: CliServer) -> str:
    """Serve Corral with a worker until the test ends; the CLI is pointed at it."""
    model = ScriptedModel(lambda _request: ScriptedModel.answer("done"))
    settings = Settings(home=tmp_path / "home", runtime={"poll_interval_seconds": 0.02})
    app = create_app(Platform(settings, providers={"scripted": model}), local_admin=True)
    return cli_server(app, home=settings.home)
