"""Path guards for the entries a tool reaches on its own (the contents of a directory).

Policy decides a tool call on the path the call names (``context.path``). A tool that walks a
directory (``fs.list_dir``, ``fs.search_text``) returns entries that path did not name, so the
gateway hands it a :class:`PathGuard` built from the call's decision: the tool asks it about
every entry it would return and leaves out those the same decision refuses, counting them.
Read the active guard with :func:`current_path_guard` (the gateway sets it with
:func:`path_guard_scope` around each execution); outside a guarded call every path is allowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence

__all__ = ["PathDecider", "PathGuard", "current_path_guard", "path_guard_scope"]

PathDecider = Callable[[Sequence[str]], list[bool]]
"""``decide(paths)``: for each workspace-relative, canonical path (``"src/app.py"``; ``"."`` is
the root), whether the call's policy decision allows it; one batched decision for many paths.
Called from worker threads."""


class PathGuard:
    """Judges the entries one call would return, and counts those it refuses.

    Each distinct path is decided once per call; ask about a directory's entries together
    (:meth:`allowed`) so they are decided in one batch.

    Args:
        decide: The call's decision for other paths; ``None``: every path is allowed (no
            policy reads ``context.path``, or the call is not governed).

    Attributes:
        skipped: Entries refused so far (a refused directory counts once; what is under it
            is not looked at).
    """

    def __init__(self, decide: PathDecider | None = None) -> None:
        self._decide = decide
        self._cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.skipped = 0

    def allowed(self, entries: Sequence[Sequence[str]]) -> list[bool]:
        """Whether each entry may be returned; refused ones are counted in ``skipped``.

        Args:
            entries: For each entry, every workspace-relative path it has: the path it is
                listed under and, when it is a symlink, the canonical path it resolves to.
                All of an entry's paths must be allowed.

        Returns:
            One answer per entry, in order.
        """
        decide = self._decide
        if decide is None:
            return [True] * len(entries)
        with self._lock:
            unknown = list(
                dict.fromkeys(p for paths in entries for p in paths if p not in self._cache)
            )
            if unknown:
                self._cache.update(zip(unknown, decide(unknown), strict=True))
            answers = [all(self._cache[p] for p in paths) for paths in entries]
            self.skipped += answers.count(False)
        return answers

    def allows(self, *paths: str) -> bool:
        """Whether one entry known by ``paths`` may be returned (see :meth:`allowed`)."""
        return self.allowed([paths])[0]


_GUARD: contextvars.ContextVar[PathGuard | None] = contextvars.ContextVar(
    "corral_path_guard", default=None
)


def current_path_guard() -> PathGuard:
    """The guard of the call being executed; one allowing everything outside a guarded call."""
    return _GUARD.get() or PathGuard()


@contextlib.contextmanager
def path_guard_scope(guard: PathGuard) -> Iterator[PathGuard]:
    """Make ``guard`` the active guard inside the block (tasks and threads started in it too)."""
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)
