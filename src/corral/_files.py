"""Files only their owner may read: ``CORRAL_HOME``, its keys, database and logs."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "SQLITE_SUFFIXES", "make_home_private", "write_private_file"]

PRIVATE_UMASK = 0o077
"""The process umask Corral sets at start: files it creates are 0600, directories 0700."""

SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""A SQLite database's files: the database and its write-ahead log, shared-memory index and
rollback journal (https://sqlite.org/tempfiles.html)."""

log = logging.getLogger(__name__)


def make_home_private(home: Path, *, database: Path | None = None) -> None:
    """Make Corral's files private to the user it runs as, before it creates any.

    Sets the process umask to :data:`PRIVATE_UMASK`; creates ``home`` and ``home/logs`` mode
    0700; and fixes what an older Corral or another program left: ``home`` (symlinks resolved)
    and its subdirectories 0700, ``*.log`` files in ``home`` (``corral up > $CORRAL_HOME/up.log``)
    and everything in ``home/logs`` 0600 (subdirectories 0700), and the SQLite ``database``
    (wherever it lies) with its ``-wal``, ``-shm`` and ``-journal`` files 0600. Key files are
    not touched: they are written 0600, and one that others could read is refused where it is
    loaded, not quietly fixed. Other symlinks are left alone, and so is what lies deeper (e.g.
    inside ``home/workspaces/``: the agents' files, not Corral's). A path Corral may not change
    (owned by another user) is logged and skipped.

    Args:
        home: ``CORRAL_HOME``.
        database: The SQLite database file; ``None`` with PostgreSQL.
    """
    os.umask(PRIVATE_UMASK)
    (home / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    home = home.resolve()
    _restrict(home, 0o700)
    for entry in home.iterdir():
        if entry.is_dir() or entry.suffix == ".log":
            _restrict(entry, 0o700 if entry.is_dir() else 0o600)
    for entry in (home / "logs").iterdir():
        _restrict(entry, 0o700 if entry.is_dir() else 0o600)
    for suffix in SQLITE_SUFFIXES if database is not None else ():
        _restrict(Path(f"{database}{suffix}"), 0o600)


def _restrict(path: Path, mode: int) -> None:
    """``chmod`` a regular file or directory (not a symlink) to ``mode`` if it differs."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return
    if stat.S_IMODE(info.st_mode) == mode:
        return
    try:
        path.chmod(mode)
    except PermissionError:
        log.warning("cannot make %s private (mode %o); it belongs to another user", path, mode)


def write_private_file(path: Path, text: str, *, replace: bool) -> bool:
    """Write ``text`` to ``path`` with mode 0600, atomically (a reader never sees half a file).

    The text goes to a temporary file created 0600 in the same directory, which then takes the
    path's place. With ``replace=False`` an existing file wins (two processes racing to create
    a key both keep the first one's); with ``replace=True`` the new text does.

    Returns:
        Whether ``path`` now holds ``text``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        if replace:
            os.replace(temporary, path)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
            return True
        return False
    finally:
        temporary.unlink(missing_ok=True)
