"""Workspaces as governed resources: which directories a run's ``fs.*`` tools may read.

A run's workspace is canonicalised (``Path.resolve(strict=True)``: ``..`` and every symlink
followed) and must then be a directory under one of its tenant's roots
(:class:`~corral.settings.WorkspaceSettings`). Corral's own data is refused whatever the roots
say: ``CORRAL_HOME`` and everything in it except the tenant's own ``workspaces/{tenant}/``
directory, the key files and the SQLite database with its ``-wal``, ``-shm`` and ``-journal``
files, and any directory that contains one of them (a workspace of ``/`` would reach them all).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from corral._files import SQLITE_SUFFIXES
from corral.errors import InvalidRequest, PolicyDenied
from corral.settings import Settings

__all__ = ["WORKSPACES_DIR", "Workspaces"]

WORKSPACES_DIR = "workspaces"
"""The directory under ``CORRAL_HOME`` holding each tenant's built-in root
(``{home}/workspaces/{tenant}/``)."""

_KEY_FILES = ("identity.key", "admin.key", "master.key")
"""Key files Corral keeps in ``CORRAL_HOME`` (API key HMAC secret, local admin key, secrets
master key)."""

_HOW_TO_ADD = (
    "under a root the operator adds with CORRAL_WORKSPACES__ROOTS (every tenant) or "
    "CORRAL_WORKSPACES__TENANT_ROOTS (one tenant) and a restart"
)


class Workspaces:
    """Decides which directories runs may use as workspaces, per tenant.

    Args:
        settings: ``home``, the store URL (a SQLite file is protected) and ``workspaces``.
    """

    def __init__(self, settings: Settings) -> None:
        self.home = settings.home.expanduser()
        self.settings = settings.workspaces
        self._protected_files = [self.home / name for name in _KEY_FILES]
        database = settings.sqlite_path
        if database is not None:
            self._protected_files += [Path(f"{database}{s}") for s in SQLITE_SUFFIXES]

    def builtin_root(self, tenant_id: str) -> Path:
        """The tenant's built-in root, ``{home}/workspaces/{tenant_id}`` (may not exist yet)."""
        return self.home / WORKSPACES_DIR / tenant_id

    def roots(self, tenant_id: str) -> list[Path]:
        """The tenant's roots as configured (not resolved; some may not exist).

        Its built-in root, then ``tenant_roots`` where set for the tenant, else ``roots``.
        """
        configured = self.settings.tenant_roots.get(tenant_id, self.settings.roots)
        return [self.builtin_root(tenant_id), *configured]

    def ensure_builtin_root(self, tenant_id: str) -> Path:
        """Create the tenant's built-in root (mode 0700) if it is missing; return it."""
        root = self.builtin_root(tenant_id)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root

    def resolve(self, tenant_id: str, workspace: str) -> Path:
        """Canonicalise ``workspace`` and check that the tenant's runs may use it.

        Args:
            tenant_id: Tenant of the run.
            workspace: An absolute path on the server (``~`` expanded).

        Returns:
            The canonical directory (every symlink resolved), to store on the run.

        Raises:
            InvalidRequest: the path is relative, does not exist or is not a directory.
            PolicyDenied: ``workspace_protected`` when it is, is inside or contains Corral's
                data directory, a key file or the database; ``workspace_not_allowed`` when it
                is not under one of the tenant's roots.
        """
        path = os.path.expanduser(workspace)
        if not os.path.isabs(path):
            raise InvalidRequest(
                f"Workspace {workspace!r} must be an absolute path on the server "
                "(the CLI resolves relative paths for you)."
            )
        # Plain strings and os.path (what Path.resolve runs underneath): the same canonical
        # paths and checks as pathlib, without a Path object per component and comparison.
        try:
            canonical = os.path.realpath(path, strict=True)
        except (OSError, RuntimeError, ValueError):  # missing, a loop, unreadable, a NUL byte
            canonical = None
        if canonical is None or not os.path.isdir(canonical):
            raise InvalidRequest(f"Workspace {workspace!r} is not a directory on the server.")
        known: dict[str, str] = {}  # canonical forms of the directories met in this check
        self._refuse_protected(workspace, canonical, tenant_id, known)
        roots = [_realpath(str(root), known) for root in self.roots(tenant_id)]
        if not any(_within(canonical, root) for root in roots):
            raise PolicyDenied(
                f"Workspace {_named(workspace, canonical)} is not under a "
                f"workspace root of tenant {tenant_id!r} "
                f"({', '.join(repr(r) for r in roots)}); put it under "
                f"{str(self.builtin_root(tenant_id))!r}, or {_HOW_TO_ADD}.",
                code="workspace_not_allowed",
            )
        return Path(canonical)

    def check_endpoint_workspace(self, workspace: Path) -> Path:
        """Canonicalise the inbound ``/mcp`` endpoint's workspace and refuse Corral's own data.

        The operator sets it (``CORRAL_MCP_ENDPOINT__WORKSPACE``), so no tenant root applies,
        but the data-directory rule does: callers of every tenant read it.

        Args:
            workspace: An absolute directory on the server.

        Returns:
            The canonical directory (every symlink resolved).

        Raises:
            InvalidRequest: the path is relative, does not exist or is not a directory.
            PolicyDenied: ``workspace_protected`` when it is, is inside or contains
                ``CORRAL_HOME``, a key file or the database.
        """
        path = workspace.expanduser()
        try:
            canonical = path.resolve(strict=True) if path.is_absolute() else None
        except (OSError, RuntimeError, ValueError):
            canonical = None
        if canonical is None or not canonical.is_dir():
            raise InvalidRequest(
                f"CORRAL_MCP_ENDPOINT__WORKSPACE {str(workspace)!r} must be an existing "
                "absolute directory on the server."
            )
        # No tenant's directory is carved out of the home: the endpoint serves every tenant.
        self._refuse_protected(str(workspace), str(canonical), None)
        return canonical

    def _refuse_protected(
        self,
        workspace: str,
        canonical: str,
        tenant_id: str | None,
        known: dict[str, str] | None = None,
    ) -> None:
        known = {} if known is None else known
        home = _realpath(str(self.home), known)
        # Inside the home only the tenant's own directory is open: not the home, not
        # ``workspaces/`` (every tenant's), not another tenant's; nothing for no tenant.
        carve_out = (
            _realpath(str(self.builtin_root(tenant_id)), known) if tenant_id is not None else None
        )
        inside_home = _within(canonical, home) and not (
            carve_out is not None and _within(canonical, carve_out)
        )
        hit = next(
            (
                protected
                for protected in self._protected(home, known)
                if _within(protected, canonical)  # the workspace contains it
            ),
            home if inside_home else None,
        )
        if hit is not None:
            raise PolicyDenied(
                f"Workspace {_named(workspace, canonical)} would expose Corral's "
                f"own data ({hit!r}): CORRAL_HOME, its key files and the database are never "
                "a workspace, nor is a directory that contains them. Use a directory holding "
                "only the files the agent should read"
                + (
                    f", under {carve_out!r}, or {_HOW_TO_ADD}."
                    if carve_out is not None
                    else ", outside CORRAL_HOME."
                ),
                code="workspace_protected",
            )

    def _protected(self, home: str, known: dict[str, str]) -> Iterator[str]:
        """Canonical paths a workspace may not contain: ``home`` (canonical), its files."""
        yield home
        for path in self._protected_files:
            yield _realpath(str(path), known)


def _realpath(path: str, known: dict[str, str]) -> str:
    """``os.path.realpath(path)`` (not strict), reusing the canonical parents in ``known``.

    ``realpath`` resolves a path one component after the other, so the canonical form of
    ``parent/name`` is that of ``parent`` followed by ``name`` (itself resolved if it is a
    symlink): the parent's is computed once per check and kept in ``known`` (the home, the
    database's directory), which saves an ``lstat`` per component of every protected path.
    Nothing is kept between checks: a symlink changed since is followed as it is now.
    """
    cached = known.get(path)
    if cached is not None:
        return cached
    parent, name = os.path.split(path)
    if not parent or parent == path or name in ("", os.curdir, os.pardir):
        real = os.path.realpath(path)  # the root, a relative name, "..": realpath's own rules
    else:
        real = os.path.join(_realpath(parent, known), name)
        if os.path.islink(real):
            real = os.path.realpath(real)
    known[path] = real
    return real


def _within(path: str, root: str) -> bool:
    """Whether canonical ``path`` is ``root`` or under it (``Path.is_relative_to`` on strings)."""
    if path == root:
        return True
    return path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _named(workspace: str, canonical: str) -> str:
    """``'given'``, with ``(resolved: 'canonical')`` when the two differ."""
    if canonical == workspace:
        return repr(workspace)
    return f"{workspace!r} (resolved: {canonical!r})"
