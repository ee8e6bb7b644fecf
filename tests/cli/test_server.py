"""``corral worker`` and friends on a home they cannot use: one line, nothing left behind."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from corral.platform import Platform
from corral.settings import Settings, StoreSettings


def _corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    env.pop("CORRAL_STORE__URL", None)
    return subprocess.run(
        [sys.executable, "-c", "from corral.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_worker_on_a_home_never_migrated_says_db_upgrade_and_writes_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    result = _corral(home, "worker")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert "corral db upgrade" in result.stderr
    assert not home.exists() or not any(home.iterdir())


def test_worker_on_an_unmigrated_database_says_db_upgrade_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    sqlite3.connect(home / "corral.db").close()
    result = _corral(home, "worker")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corral db upgrade" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_up_on_a_database_it_cannot_migrate_says_why_and_the_fix_in_one_line(
    tmp_path: Path,
) -> None:
    """`corral up` migrates the embedded store in a `corral db upgrade` child; its failure (here a
    revision this Corral does not know) is one error line, and the server never starts."""
    home = tmp_path / "home"
    home.mkdir()
    with sqlite3.connect(home / "corral.db") as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES ('9999')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _corral(home, "up", "--port", str(port), "--no-local-model")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert f"migrating the database at sqlite+aiosqlite:///{home / 'corral.db'} failed" in errors[0]
    assert "9999" in errors[0] and "run `corral db upgrade`" in errors[0]
    assert "Traceback" not in result.stderr
    assert "API on" not in result.stdout


def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from corral.cli import main; main()", "worker"],
        env={**os.environ, "CORRAL_HOME": str(tmp_path), "CORRAL_API__PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "api.port" in result.stderr


async def test_db_upgrade_migrates_the_configured_schema(
    tmp_path: Path, store_settings: StoreSettings
) -> None:
    # `corral db upgrade` once ignored CORRAL_STORE__POSTGRES_SCHEMA and migrated the default
    # schema, which the platform then never read.
    env = {**os.environ, "CORRAL_HOME": str(tmp_path / "home")}
    env["CORRAL_STORE__URL"] = str(store_settings.url)
    if store_settings.postgres_schema:
        env["CORRAL_STORE__POSTGRES_SCHEMA"] = store_settings.postgres_schema
    command = [sys.executable, "-c", "from corral.cli import main; main()", "db", "upgrade"]
    result = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "database migrated (empty) ->" in result.stdout
    platform = Platform(Settings(home=tmp_path / "home", store=store_settings), migrate=False)
    try:
        await platform.start()  # refuses an unmigrated database: it found the migrated schema
    finally:
        await platform.close()
