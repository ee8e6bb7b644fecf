"""Files only their owner may read (keys in ``CORRAL_HOME``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_private_file"]


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
