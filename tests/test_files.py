"""Corral's files are private to the user it runs as: home 0700, keys, database, logs 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.platform import Platform
from corral.settings import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def make_readable_by_all(files: list[Path]) -> None:
    files[0].parent.mkdir(exist_ok=True)
    for path in files:
        path.write_bytes(b"")
        path.chmod(0o644)


@pytest.fixture
def restore_umask() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


@pytest.mark.usefixtures("restore_umask")
async def test_a_started_platform_keeps_its_files_to_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # What an older Corral (or `corral up > $CORRAL_HOME/up.log`) left behind, readable by all.
    (home / "logs" / "mcp").mkdir(parents=True, mode=0o755)
    home.chmod(0o755)
    (home / "logs").chmod(0o755)
    old_log = home / "logs" / "local-model-8421.log"
    old_log.write_text("old\n")
    old_log.chmod(0o644)
    up_log = home / "up.log"
    up_log.write_text("started\n")
    up_log.chmod(0o644)
    database = home / "corral.db"
    database.touch(mode=0o644)
    database.chmod(0o644)
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir(mode=0o755)
    (home / "link").symlink_to(elsewhere)
    notes = home / "notes.txt"
    notes.write_text("the operator's, not Corral's\n")
    notes.chmod(0o644)
    user_file = home / "workspaces" / "default" / "repo" / "README.md"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("# mine\n")
    user_file.chmod(0o644)

    platform = Platform(Settings(home=home))
    await platform.start()
    try:
        await platform.ensure_local_admin()
        await platform.register_builtin_tools()  # a write: the WAL and its index exist now
        wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
        assert mode(wal) == mode(shm) == 0o600  # they exist after a write
        assert os.umask(0o077) == 0o077
        assert mode(home) == 0o700
        for directory in (home / "logs", home / "logs" / "mcp", home / "workspaces"):
            assert mode(directory) == 0o700, directory
        for private in (database, old_log, up_log):
            assert mode(private) == 0o600, private
        for key in ("identity.key", "admin.key"):
            assert mode(home / key) == 0o600, key
        # Not Corral's: a symlink's target and the agents' files keep their modes.
        assert mode(elsewhere) == 0o755
        assert mode(user_file) == mode(notes) == 0o644
    finally:
        await platform.close()
    # Whatever Corral creates later is private too.
    log = home / "logs" / "new.log"
    log.write_text("x")
    assert mode(log) == 0o600


@pytest.mark.usefixtures("restore_umask")
async def test_a_database_outside_the_home_is_made_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "corral.db"
    files = [Path(f"{database}{suffix}") for suffix in ("", "-wal", "-shm")]
    make_readable_by_all(files)
    platform = Platform(
        Settings(home=tmp_path / "home", store={"url": f"sqlite+aiosqlite:///{database}"})
    )
    await platform.close()
    assert [mode(path) for path in files] == [0o600] * 3
