"""``corral status``: the readiness checks as a table or JSON; exit code 1 when not ready."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.platform import Platform
from corral.settings import Settings

runner = CliRunner()


@pytest.fixture
def live(tmp_path: Path, cli_server: CliServer) -> Path:
    """A served Corral on SQLite; gives its database file."""
    database = tmp_path / "c.db"
    settings = Settings(
        home=tmp_path / "home",
        store={"url": f"sqlite+aiosqlite:///{database}"},
        health={"cache_seconds": 0},
    )
    cli_server(create_app(Platform(settings), run_worker=False))  # /readyz needs no credentials
    return database


def test_status_prints_each_check_and_exits_0_when_ready(live: Path) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["CHECK", "STATUS", "DETAIL"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert rows["store"] == "ok" and rows["migrations"] == "ok" and rows["redis"] == "skipped"
    assert lines[-1] == "ready"


def test_status_exits_1_naming_the_failed_check(live: Path) -> None:
    with sqlite3.connect(live) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0001'")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "not ready: migrations failed"
    assert "corral db upgrade" in result.output

    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["status"] == "not_ready" and body["failed"] == ["migrations"]
    assert body["checks"]["migrations"]["status"] == "fail"
