"""The builtin read-only workspace tools: ``fs.list_dir``, ``fs.read_file``, ``fs.search_text``.

Every path argument goes through :func:`resolve_in_workspace`, which canonicalises it (``..``
and symlinks resolved) before checking that it stays inside the run's workspace root. The tools
only read; none of them writes, creates or deletes anything.

Path guards reach every entry (docs/adr/0005-path-guards-and-the-untrusted-fence.md): policy
decides the call on the path it names, and ``fs.list_dir`` and ``fs.search_text`` ask the call's
:class:`~corral.gateway.tools._guard.PathGuard` about every entry they would return (under the
path it is listed as and, for a symlink, the canonical path it resolves to), leave out those the
call's decision refuses and say how many (``[skipped_by_policy: N ...]``). A refused directory
is not walked. A regular file with more than one hard link is refused by ``fs.read_file`` and
skipped by ``fs.search_text``: its other names may lie under a guarded path, and a guard sees
only the name it was given.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from corral.contracts import API_VERSION, SCHEMA_CHECKED, Tool
from corral.errors import PathOutsideWorkspace, ToolFailed
from corral.gateway.tools._guard import PathGuard, current_path_guard

__all__ = [
    "BUILTIN_TOOLS",
    "BuiltinTool",
    "resolve_in_workspace",
    "resolve_with_root",
    "returned_paths",
]

_MAX_PATH_CHARS = 1024
_MAX_LIST_ENTRIES = 500
_BINARY_SNIFF_BYTES = 8192
_MAX_MATCH_LINE_CHARS = 200
_MAX_READ_LINES = 2000
_MAX_OFFSET = 10_000_000
_DEFAULT_READ_LINES = 400
_MAX_SEARCH_RESULTS = 200
_DEFAULT_SEARCH_RESULTS = 50
_SKIPPED_DIRS = frozenset({"__pycache__"})
_VERSION = "1.1.0"
"""Version of the fs tools' documents; raise it when a description or schema changes (a store
holding the previous documents then records new versions). 1.1.0: path guards on every entry
and the hard-link rule (ADR 0005)."""


class _BuiltinRun(Protocol):
    async def __call__(
        self, arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
    ) -> str: ...


@dataclass(frozen=True)
class BuiltinTool:
    """A tool shipped with Corral: its registry document and its implementation.

    Attributes:
        contract: The ``Tool`` document registered for it (``type: builtin``).
        run: ``await run(arguments, workspace, max_file_bytes=...)`` returns the text output for
            the model; raises :class:`~corral.errors.ToolFailed` (or its subclass
            :class:`~corral.errors.PathOutsideWorkspace`) when the call fails.
    """

    contract: Tool
    run: _BuiltinRun


def resolve_in_workspace(workspace: Path | None, path: str) -> Path:
    """Canonicalise a path argument and check that it stays inside the workspace.

    The path is joined to the workspace root and resolved with :func:`os.path.realpath` (``..``
    collapsed, symlinks followed) *before* the containment check, so ``a/../../x`` and a
    symlink pointing out of the root are both refused. The path need not exist.

    Args:
        workspace: The run's workspace root, or ``None`` when the run has none.
        path: A path relative to the workspace root; ``""`` and ``"."`` mean the root.

    Returns:
        The absolute, canonical path, inside ``realpath(workspace)``.

    Raises:
        ToolFailed: ``code="no_workspace"`` when ``workspace`` is ``None`` or not a directory;
            ``code="invalid_arguments"`` when ``path`` contains a NUL byte.
        PathOutsideWorkspace: When ``path`` is absolute or resolves outside the root.
    """
    return resolve_with_root(workspace, path)[0]


def resolve_with_root(workspace: Path | None, path: str) -> tuple[Path, Path]:
    """``(resolved path, canonical workspace root)``; see :func:`resolve_in_workspace`."""
    if workspace is None:
        raise ToolFailed(
            "This run has no workspace, so the fs.* tools cannot read files; "
            "start the run with `--workspace DIR`.",
            code="no_workspace",
        )
    if "\0" in path:
        raise ToolFailed(f"Path {path!r} contains a NUL byte.", code="invalid_arguments")
    if os.path.isabs(path):
        raise PathOutsideWorkspace(
            f"Path {path!r} is absolute; use a path relative to the workspace root "
            "(e.g. 'src/main.py', or '.' for the root)."
        )
    # On strings (``os.path`` only): the same system calls as ``Path.resolve``/``is_dir``, no
    # ``Path`` parsed per comparison; two ``Path`` objects are built for the answer.
    root = os.path.realpath(workspace)
    if not os.path.isdir(root):
        raise ToolFailed(
            "This run's workspace is not an existing directory; "
            "start the run with `--workspace DIR` naming a directory.",
            code="no_workspace",
        )
    if workspace.is_absolute() and root != os.path.abspath(workspace):
        # The workspace was stored canonical when it was checked against its roots; a directory
        # on its path replaced by a symlink since then would lead the tools elsewhere.
        raise ToolFailed(
            f"This run's workspace {str(workspace)!r} now resolves to {root!r}: a directory "
            "on its path was replaced by a symlink after the run was created. Start a new run "
            "on the directory you mean.",
            code="workspace_moved",
        )
    resolved = _realpath_under(root, path)
    if resolved != root and not resolved.startswith(root if root.endswith("/") else root + "/"):
        raise PathOutsideWorkspace(
            f"Path {path!r} resolves outside the workspace (through '..' or a symlink); "
            "use a path relative to the workspace root that stays inside it."
        )
    return Path(resolved), Path(root)


def _realpath_under(root: str, path: str) -> str:
    """``realpath(root / path)`` for a canonical ``root``, without re-reading ``root``'s parts.

    :func:`os.path.realpath` calls ``lstat`` on every component, the root's included; the root
    was canonicalised a moment ago, so only the components of ``path`` are examined here. A
    symlink or a ``..`` among them hands the whole path to :func:`os.path.realpath` (same
    result, the general algorithm); ``.`` and ``""`` cost no system call.
    """
    current = root
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return os.path.realpath(os.path.join(root, path))
        current = os.path.join(current, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(current).st_mode)
        except OSError:  # realpath (not strict) treats a missing component as a plain name
            is_link = False
        if is_link:
            return os.path.realpath(os.path.join(root, path))
    return current


# --- arguments ---------------------------------------------------------------------------------


def _str_arg(arguments: dict[str, Any], name: str, default: str | None = None) -> str:
    value = arguments.get(name, default)
    if value is None:
        raise ToolFailed(f"Argument {name!r} is required.", code="invalid_arguments")
    if not isinstance(value, str) or len(value) > _MAX_PATH_CHARS:
        raise ToolFailed(
            f"Argument {name!r} must be a string of at most {_MAX_PATH_CHARS} characters.",
            code="invalid_arguments",
        )
    return value


def _int_arg(arguments: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = arguments.get(name, default)
    # bool is an int subclass; true/false are not line counts.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ToolFailed(
            f"Argument {name!r} must be an integer from {low} to {high}; got {value!r}.",
            code="invalid_arguments",
        )
    return value


# --- file helpers ------------------------------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    # Split on "\n" only (not str.splitlines) so line numbers agree with editors and grep.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_text(file: Path, path: str, max_file_bytes: int) -> str | None:
    """The file's text, or ``None`` when it is binary (a NUL byte in its first 8 KiB)."""
    with file.open("rb") as handle:
        # Read one byte more than allowed: the file may have grown since it was stat'ed.
        data = handle.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        raise ToolFailed(
            f"{path!r} is larger than the {max_file_bytes}-byte limit.", code="file_too_large"
        )
    if b"\0" in data[:_BINARY_SNIFF_BYTES]:
        return None
    return data.decode("utf-8", errors="replace")


def _stat(resolved: Path, path: str) -> os.stat_result:
    try:
        return resolved.stat()
    except FileNotFoundError:
        raise ToolFailed(
            f"No such file or directory {path!r} in the workspace; "
            "call fs.list_dir to see what exists.",
            code="not_found",
        ) from None
    except OSError as exc:
        raise ToolFailed(f"Cannot access {path!r}: {exc.strerror}.", code="tool_failed") from None


def _relative(file: Path, root: Path) -> str:
    """``file`` relative to ``root``, POSIX style; ``"."`` for the root itself."""
    return file.relative_to(root).as_posix() or "."


def _entry_paths(file: Path, root: Path) -> tuple[str, ...]:
    """The paths a path guard judges an entry by: as listed, and canonical when inside."""
    canonical = Path(os.path.realpath(file))
    if canonical.is_relative_to(root):
        return _relative(file, root), _relative(canonical, root)
    return (_relative(file, root),)


def _hard_linked(info: os.stat_result) -> bool:
    """A regular file with more than one name (directories always have several links)."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink > 1


def _notes(skipped_by_policy: int, hard_linked: int = 0) -> list[str]:
    """The lines that say what was left out, if anything."""
    notes = []
    if skipped_by_policy:
        notes.append(
            f"[skipped_by_policy: {skipped_by_policy} "
            f"{'entry' if skipped_by_policy == 1 else 'entries'} left out; policy does not "
            "allow this call on them]"
        )
    if hard_linked:
        notes.append(
            f"[skipped_hard_links: {hard_linked} "
            f"{'file has' if hard_linked == 1 else 'files have'} more than one hard link; "
            "the fs tools do not read such files]"
        )
    return notes


# --- paths a call returned ---------------------------------------------------------------------

_MATCH_LINE = re.compile(r"^(.+?):\d+: ")


def _workspace_path(base: str, name: str) -> str | None:
    """``name`` under ``base``, relative to the workspace root; ``None`` for the root or above."""
    path = posixpath.normpath(posixpath.join(base, name))
    if path == "." or path.startswith(("../", "/")) or path == "..":
        return None
    return path


def returned_paths(
    name: str, arguments: dict[str, Any], output: str, *, truncated: bool = False
) -> list[str]:
    """The workspace files a completed fs tool call returned, relative to the workspace root.

    ``fs.read_file`` returns the file it read; ``fs.list_dir`` the files it listed (not the
    directories); ``fs.search_text`` the files of its matches. Other tools return none. The
    paths are what a final answer may cite (``answer.cite_sources``).

    Args:
        name: Tool name.
        arguments: The call's arguments.
        output: The call's output text (as the tool produced it, not wrapped).
        truncated: The output was cut to the size cap: its last line is left out.

    Returns:
        Paths in output order, without duplicates.
    """
    path = arguments.get("path", ".")
    base = path if isinstance(path, str) else "."
    if name == "fs.read_file":
        found = [_workspace_path(".", base)]
    elif name in ("fs.list_dir", "fs.search_text"):
        lines = output.splitlines()
        if truncated:
            lines = lines[:-1]
        if name == "fs.list_dir":
            entries = [line for line in lines if line and not line.startswith("[")]
            found = [_workspace_path(base, e) for e in entries if not e.endswith("/")]
        else:
            matches = (_MATCH_LINE.match(line) for line in lines)
            found = [_workspace_path(".", m.group(1)) for m in matches if m is not None]
    else:
        return []
    return list(dict.fromkeys(p for p in found if p is not None))


# --- fs.list_dir -------------------------------------------------------------------------------


def _list_dir(resolved: Path, root: Path, path: str, guard: PathGuard) -> str:
    if not stat.S_ISDIR(_stat(resolved, path).st_mode):
        raise ToolFailed(
            f"{path!r} is not a directory; use fs.read_file to read a file.",
            code="not_a_directory",
        )
    before = guard.skipped
    try:
        with os.scandir(resolved) as scan:
            entries = [
                (entry.name + "/" if entry.is_dir() else entry.name, entry) for entry in scan
            ]
    except OSError as exc:
        raise ToolFailed(f"Cannot list {path!r}: {exc.strerror}.", code="tool_failed") from None
    allowed = guard.allowed([_entry_paths(Path(entry.path), root) for _, entry in entries])
    names = sorted(name for (name, _), ok in zip(entries, allowed, strict=True) if ok)
    notes = _notes(guard.skipped - before)
    if not names and not notes:
        return "[empty directory]"
    lines = names[:_MAX_LIST_ENTRIES]
    if len(names) > _MAX_LIST_ENTRIES:
        lines.append(f"[... {len(names) - _MAX_LIST_ENTRIES} more entries omitted]")
    return "\n".join(lines + notes)


async def _run_list_dir(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    path = _str_arg(arguments, "path", ".")
    resolved, root = resolve_with_root(workspace, path)
    return await asyncio.to_thread(_list_dir, resolved, root, path, current_path_guard())


# --- fs.read_file ------------------------------------------------------------------------------


def _read_file(resolved: Path, path: str, offset: int, limit: int, max_file_bytes: int) -> str:
    info = _stat(resolved, path)
    if stat.S_ISDIR(info.st_mode):
        raise ToolFailed(f"{path!r} is a directory; use fs.list_dir to list it.", code="not_a_file")
    if not stat.S_ISREG(info.st_mode):
        raise ToolFailed(f"{path!r} is not a regular file.", code="not_a_file")
    if _hard_linked(info):
        raise ToolFailed(
            f"{path!r} has {info.st_nlink} hard links; the fs tools refuse files with more than "
            "one name, since a path guard sees only the name it is given. Put a copy in the "
            "workspace (cp, not ln) to let the agent read it.",
            code="hard_link",
        )
    if info.st_size > max_file_bytes:
        raise ToolFailed(
            f"{path!r} is {info.st_size} bytes, larger than the {max_file_bytes}-byte limit "
            "for fs.read_file; use fs.search_text to find lines in it instead.",
            code="file_too_large",
        )
    try:
        text = _read_text(resolved, path, max_file_bytes)
    except OSError as exc:
        raise ToolFailed(f"Cannot read {path!r}: {exc.strerror}.", code="tool_failed") from None
    if text is None:
        raise ToolFailed(
            f"{path!r} is a binary file; only text files can be read.", code="binary_file"
        )
    lines = _split_lines(text)
    if not lines and offset == 0:
        return "[empty file]"
    if offset >= len(lines):
        raise ToolFailed(
            f"offset={offset} is past the end of {path!r}, which has {len(lines)} lines.",
            code="invalid_arguments",
        )
    end = offset + limit
    output = "\n".join(lines[offset:end])
    if end < len(lines):
        output += f"\n[... {len(lines) - end} more lines; call again with offset={end}]"
    return output


async def _run_read_file(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    path = _str_arg(arguments, "path")
    offset = _int_arg(arguments, "offset", 0, 0, _MAX_OFFSET)
    limit = _int_arg(arguments, "limit", _DEFAULT_READ_LINES, 1, _MAX_READ_LINES)
    resolved = resolve_in_workspace(workspace, path)
    return await asyncio.to_thread(_read_file, resolved, path, offset, limit, max_file_bytes)


# --- fs.search_text ----------------------------------------------------------------------------


def _walk_files(top: Path, root: Path, guard: PathGuard) -> Iterator[Path]:
    """Files under ``top`` in sorted order that ``guard`` allows.

    Skips hidden dirs, files whose canonical path leaves ``root``, and directories ``guard``
    refuses (with everything under them).
    """
    if not top.is_dir():
        yield top  # the path the call named, which its policy decision judged
        return
    # Symlinked directories are not descended into (followlinks=False): no cycles, no duplicates.
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirs = [
            name
            for name in sorted(dirnames)
            if not name.startswith(".")
            and name not in _SKIPPED_DIRS
            and not os.path.islink(here / name)
        ]
        # Files whose canonical path leaves the root are skipped unjudged (one path only).
        files = [
            (name, paths)
            for name in sorted(filenames)
            if len(paths := _entry_paths(here / name, root)) == 2
        ]
        # One batch per directory: its subdirectories and its files together.
        allowed = guard.allowed(
            [(_relative(here / name, root),) for name in dirs] + [paths for _, paths in files]
        )
        dirnames[:] = [name for name, ok in zip(dirs, allowed, strict=False) if ok]
        for (name, _), ok in zip(files, allowed[len(dirs) :], strict=True):
            if ok:
                yield here / name


def _file_text(file: Path, max_file_bytes: int) -> str | bool:
    """The text of a searchable file; ``True`` for a hard-linked file; ``False`` to skip it.

    Skipped: unreadable, not regular, over the size limit, or binary.
    """
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_file_bytes:
            return False
        if _hard_linked(info):
            return True
        text = _read_text(file, str(file), max_file_bytes)
    except (OSError, ToolFailed):
        return False
    return False if text is None else text


def _search_text(
    resolved: Path,
    root: Path,
    path: str,
    query: str,
    limits: tuple[int, int],
    guard: PathGuard,
) -> str:
    _stat(resolved, path)
    max_results, max_file_bytes = limits
    needle, before, hard_linked = query.casefold(), guard.skipped, 0
    results: list[str] = []
    for file in _walk_files(resolved, root, guard):
        text = _file_text(file, max_file_bytes)
        if text is True:
            hard_linked += 1
        if isinstance(text, bool):
            continue
        relative = _relative(file, root)
        for number, line in enumerate(_split_lines(text), start=1):
            if needle not in line.casefold():
                continue
            if len(results) == max_results:
                results.append(
                    f"[stopped at max_results={max_results}; more matches exist, "
                    "narrow the query or the path]"
                )
                return "\n".join(results + _notes(guard.skipped - before, hard_linked))
            results.append(f"{relative}:{number}: {line.strip()[:_MAX_MATCH_LINE_CHARS]}")
    if not results:
        results.append(f"No matches for {query!r} in {path!r}.")
    return "\n".join(results + _notes(guard.skipped - before, hard_linked))


async def _run_search_text(
    arguments: dict[str, Any], workspace: Path | None, *, max_file_bytes: int
) -> str:
    query = _str_arg(arguments, "query")
    if not query:
        raise ToolFailed("Argument 'query' must not be empty.", code="invalid_arguments")
    path = _str_arg(arguments, "path", ".")
    max_results = _int_arg(
        arguments, "max_results", _DEFAULT_SEARCH_RESULTS, 1, _MAX_SEARCH_RESULTS
    )
    resolved, root = resolve_with_root(workspace, path)
    return await asyncio.to_thread(
        _search_text,
        resolved,
        root,
        path,
        query,
        (max_results, max_file_bytes),
        current_path_guard(),
    )


# --- the registry documents --------------------------------------------------------------------

_PATH_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": _MAX_PATH_CHARS}


def _contract(name: str, description: str, input_schema: dict[str, Any]) -> Tool:
    # SCHEMA_CHECKED: compiling these schemas would import jsonschema_rs in every process that
    # imports Corral; tests/gateway/tools/test_fs.py validates them without it.
    return Tool.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": "Tool",
            "metadata": {"name": name, "version": _VERSION},
            "spec": {
                "description": description,
                "type": "builtin",
                "side_effect": "read",
                "input_schema": input_schema,
            },
        },
        context=SCHEMA_CHECKED,
    )


_LIST_DIR = _contract(
    "fs.list_dir",
    "List the entries of a directory in the workspace, sorted by name, one per line; "
    "directories end with '/'. At most 500 entries are shown. Paths are relative to the "
    "workspace root ('.' is the root). Entries that policy does not allow this call on are "
    "left out, and a last line '[skipped_by_policy: N ...]' says how many.",
    {
        "type": "object",
        "properties": {
            "path": {
                **_PATH_SCHEMA,
                "default": ".",
                "description": "Directory relative to the workspace root; '.' is the root.",
            },
        },
        "additionalProperties": False,
    },
)

_READ_FILE = _contract(
    "fs.read_file",
    "Read lines of a text file in the workspace. Returns the lines as they are (no line "
    "numbers). When more lines remain, the last line says so and gives the offset to pass "
    "next. Refuses directories, binary files, files over the size limit and files with more "
    "than one hard link. To start at line N reported by fs.search_text, pass offset=N-1.",
    {
        "type": "object",
        "properties": {
            "path": {
                **_PATH_SCHEMA,
                "minLength": 1,
                "description": "File relative to the workspace root, e.g. 'src/app.py'.",
            },
            "offset": {
                "type": "integer",
                "minimum": 0,
                "maximum": _MAX_OFFSET,
                "default": 0,
                "description": "Number of lines to skip from the start of the file.",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": _MAX_READ_LINES,
                "default": _DEFAULT_READ_LINES,
                "description": "Maximum number of lines to return.",
            },
        },
        "required": ["path"],
        "additionalProperties": False,
    },
)

_SEARCH_TEXT = _contract(
    "fs.search_text",
    "Search text files in the workspace for a plain substring (case-insensitive, not a "
    "regular expression). Searches a directory recursively, or one file. Returns one line per "
    "match as 'path:LINE: text', paths relative to the workspace root. Hidden directories "
    "(starting with '.'), __pycache__, binary files, files over the size limit and files with "
    "more than one hard link are skipped. Files and directories that policy does not allow "
    "this call on are skipped too, and a last line '[skipped_by_policy: N ...]' says how many.",
    {
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": _MAX_PATH_CHARS,
                "description": "Text to look for, matched case-insensitively within a line.",
            },
            "path": {
                **_PATH_SCHEMA,
                "default": ".",
                "description": "Directory or file to search, relative to the workspace root.",
            },
            "max_results": {
                "type": "integer",
                "minimum": 1,
                "maximum": _MAX_SEARCH_RESULTS,
                "default": _DEFAULT_SEARCH_RESULTS,
                "description": "Stop after this many matching lines.",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)

BUILTIN_TOOLS: dict[str, BuiltinTool] = {
    tool.contract.metadata.name: tool
    for tool in (
        BuiltinTool(contract=_LIST_DIR, run=_run_list_dir),
        BuiltinTool(contract=_READ_FILE, run=_run_read_file),
        BuiltinTool(contract=_SEARCH_TEXT, run=_run_search_text),
    )
}
"""The builtin tools by name (``fs.list_dir``, ``fs.read_file``, ``fs.search_text``)."""
