from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from corral.contracts import Tool
from corral.errors import PathOutsideWorkspace, ToolFailed
from corral.gateway.tools._fs import BUILTIN_TOOLS, BuiltinTool, resolve_in_workspace
from corral.platform import Platform
from corral.registry import list_tools
from corral.settings import Settings

MAX_FILE_BYTES = 1_000_000


async def call(name: str, workspace: Path | None, **arguments: Any) -> str:
    return await BUILTIN_TOOLS[name].run(arguments, workspace, max_file_bytes=MAX_FILE_BYTES)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "app.py").write_text("import os\n\ndef main():\n    return 'Hello'\n")
    (root / "README.md").write_text("# Demo\nSay hello to the world.\n")
    (tmp_path / "secret.txt").write_text("top secret hello\n")
    return root


# --- resolve_in_workspace ----------------------------------------------------------------------


# Containment is judged on the canonical path: a detour that comes back inside is fine.
@pytest.mark.parametrize("path", ["", ".", "./", "src/..", "src/pkg/../..", "../ws"])
def test_root_aliases_resolve_to_root(workspace: Path, path: str) -> None:
    assert resolve_in_workspace(workspace, path) == workspace.resolve()


def test_relative_path_resolves_inside(workspace: Path) -> None:
    resolved = resolve_in_workspace(workspace, "src/pkg/../pkg/app.py")
    assert resolved == workspace.resolve() / "src" / "pkg" / "app.py"


@pytest.mark.parametrize("path", ["../secret.txt", "..", "a/../../x", "src/../../ws2", "./../wsx"])
def test_dotdot_escape_refused(workspace: Path, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as info:
        resolve_in_workspace(workspace, path)
    assert repr(path) in info.value.message
    assert "relative to the workspace root" in info.value.message
    assert info.value.code == "path_outside_workspace"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_absolute_path_refused_even_inside_workspace(workspace: Path, kind: str) -> None:
    inside = workspace / "README.md" if kind == "file" else workspace
    for path in (str(inside), "/etc/passwd", "/srv/../etc", "//etc"):
        with pytest.raises(PathOutsideWorkspace, match="relative to the workspace root"):
            resolve_in_workspace(workspace, path)


def test_nul_byte_refused(workspace: Path) -> None:
    with pytest.raises(ToolFailed, match="NUL") as info:
        resolve_in_workspace(workspace, "README.md\0.txt")
    assert not isinstance(info.value, PathOutsideWorkspace)
    assert info.value.code == "invalid_arguments"


def test_symlink_leaving_root_refused(workspace: Path) -> None:
    (workspace / "out").symlink_to(workspace.parent / "secret.txt")
    (workspace / "outdir").symlink_to(workspace.parent)
    for path in ("out", "outdir", "outdir/secret.txt", "src/../outdir"):
        with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
            resolve_in_workspace(workspace, path)


def test_symlink_inside_root_allowed(workspace: Path) -> None:
    (workspace / "link.py").symlink_to(workspace / "src" / "pkg" / "app.py")
    (workspace / "pkglink").symlink_to("src/pkg")
    assert resolve_in_workspace(workspace, "link.py") == workspace / "src" / "pkg" / "app.py"
    assert resolve_in_workspace(workspace, "pkglink/app.py") == workspace / "src/pkg/app.py"


async def test_a_workspace_swapped_for_a_symlink_after_the_check_is_refused(
    tmp_path: Path, workspace: Path
) -> None:
    # Runs store their workspace canonical (checked against the roots when the run was
    # created). Replacing a directory on that path with a symlink afterwards would send the
    # tools elsewhere, e.g. into Corral's own data directory: they refuse instead.
    assert resolve_in_workspace(workspace, "README.md") == workspace / "README.md"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "README.md").write_text("the server's keys\n")
    os.rename(workspace, tmp_path / "moved")
    os.symlink(elsewhere, workspace)
    with pytest.raises(ToolFailed, match="replaced by a symlink") as info:
        resolve_in_workspace(workspace, "README.md")
    assert info.value.code == "workspace_moved"
    for tool in ("fs.read_file", "fs.list_dir", "fs.search_text"):
        arguments = {"path": "README.md"} if tool == "fs.read_file" else {"path": "."}
        if tool == "fs.search_text":
            arguments["query"] = "keys"
        with pytest.raises(ToolFailed, match="replaced by a symlink"):
            await call(tool, workspace, **arguments)


def test_missing_workspace_refused() -> None:
    with pytest.raises(ToolFailed, match="--workspace DIR") as info:
        resolve_in_workspace(None, "README.md")
    assert info.value.code == "no_workspace"


async def test_every_tool_refuses_escape_and_missing_workspace(workspace: Path) -> None:
    for name, arguments in [
        ("fs.list_dir", {"path": ".."}),
        ("fs.read_file", {"path": "../secret.txt"}),
        ("fs.search_text", {"query": "secret", "path": ".."}),
    ]:
        with pytest.raises(PathOutsideWorkspace):
            await call(name, workspace, **arguments)
        with pytest.raises(ToolFailed, match="no workspace"):
            await call(name, None, **arguments)


# --- fs.list_dir -------------------------------------------------------------------------------


async def test_list_dir_format(workspace: Path) -> None:
    (workspace / ".hidden").mkdir()
    (workspace / "b.txt").write_text("")
    assert await call("fs.list_dir", workspace) == ".hidden/\nREADME.md\nb.txt\nsrc/"
    assert await call("fs.list_dir", workspace, path="src/pkg") == "app.py"


async def test_list_dir_caps_entries(workspace: Path) -> None:
    many = workspace / "many"
    many.mkdir()
    for index in range(503):
        (many / f"f{index:04d}").write_text("")
    lines = (await call("fs.list_dir", workspace, path="many")).splitlines()
    assert len(lines) == 501
    assert lines[0] == "f0000"
    assert lines[499] == "f0499"
    assert lines[-1] == "[... 3 more entries omitted]"


async def test_list_dir_errors(workspace: Path) -> None:
    with pytest.raises(ToolFailed, match="not a directory"):
        await call("fs.list_dir", workspace, path="README.md")
    with pytest.raises(ToolFailed, match="No such file") as info:
        await call("fs.list_dir", workspace, path="nope")
    assert info.value.code == "not_found"
    (workspace / "empty").mkdir()
    assert await call("fs.list_dir", workspace, path="empty") == "[empty directory]"


# --- fs.read_file ------------------------------------------------------------------------------


async def test_read_file_whole(workspace: Path) -> None:
    output = await call("fs.read_file", workspace, path="src/pkg/app.py")
    assert output == "import os\n\ndef main():\n    return 'Hello'"


async def test_read_file_offset_limit_and_continuation(workspace: Path) -> None:
    (workspace / "long.txt").write_text("".join(f"line {n}\r\n" for n in range(1, 11)))
    first = await call("fs.read_file", workspace, path="long.txt", limit=3)
    assert first == "line 1\nline 2\nline 3\n[... 7 more lines; call again with offset=3]"
    middle = await call("fs.read_file", workspace, path="long.txt", offset=3, limit=4)
    assert middle == "line 4\nline 5\nline 6\nline 7\n[... 3 more lines; call again with offset=7]"
    last = await call("fs.read_file", workspace, path="long.txt", offset=7, limit=3)
    assert last == "line 8\nline 9\nline 10"
    with pytest.raises(ToolFailed, match="past the end"):
        await call("fs.read_file", workspace, path="long.txt", offset=10)


async def test_read_file_default_limit_is_400_lines(workspace: Path) -> None:
    (workspace / "big.txt").write_text("x\n" * 1000)
    lines = (await call("fs.read_file", workspace, path="big.txt")).splitlines()
    assert len(lines) == 401
    assert lines[-1] == "[... 600 more lines; call again with offset=400]"


async def test_read_file_replaces_invalid_utf8(workspace: Path) -> None:
    (workspace / "latin1.txt").write_bytes(b"caf\xe9\n")
    assert await call("fs.read_file", workspace, path="latin1.txt") == "caf\ufffd"


async def test_read_file_refuses_binary(workspace: Path) -> None:
    (workspace / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + b"a" * 100)
    with pytest.raises(ToolFailed, match="binary") as info:
        await call("fs.read_file", workspace, path="img.png")
    assert info.value.code == "binary_file"


async def test_read_file_refuses_oversized(workspace: Path) -> None:
    (workspace / "huge.txt").write_text("a" * 101)
    tool = BUILTIN_TOOLS["fs.read_file"]
    with pytest.raises(ToolFailed, match="101 bytes, larger than the 100-byte limit") as info:
        await tool.run({"path": "huge.txt"}, workspace, max_file_bytes=100)
    assert info.value.code == "file_too_large"
    assert await tool.run({"path": "huge.txt"}, workspace, max_file_bytes=101) == "a" * 101


async def test_read_file_refuses_directory_and_missing(workspace: Path) -> None:
    with pytest.raises(ToolFailed, match=r"is a directory; use fs\.list_dir"):
        await call("fs.read_file", workspace, path="src")
    with pytest.raises(ToolFailed, match="No such file"):
        await call("fs.read_file", workspace, path="missing.txt")


async def test_read_file_refuses_fifo_without_blocking(workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolFailed, match="not a regular file"):
        await call("fs.read_file", workspace, path="pipe")


async def test_read_file_through_symlinks(workspace: Path) -> None:
    (workspace / "link.py").symlink_to("src/pkg/app.py")
    assert (await call("fs.read_file", workspace, path="link.py")).startswith("import os")
    (workspace / "leak").symlink_to(workspace.parent / "secret.txt")
    with pytest.raises(PathOutsideWorkspace):
        await call("fs.read_file", workspace, path="leak")


async def test_read_file_checks_argument_types(workspace: Path) -> None:
    with pytest.raises(ToolFailed, match="'limit' must be an integer from 1 to 2000"):
        await call("fs.read_file", workspace, path="README.md", limit=0)
    with pytest.raises(ToolFailed, match="'offset'"):
        await call("fs.read_file", workspace, path="README.md", offset=True)
    with pytest.raises(ToolFailed, match="'path' is required"):
        await call("fs.read_file", workspace)


# --- fs.search_text ----------------------------------------------------------------------------


async def test_search_text_reports_path_and_line(workspace: Path) -> None:
    output = await call("fs.search_text", workspace, query="HELLO")
    assert output == "README.md:2: Say hello to the world.\nsrc/pkg/app.py:4: return 'Hello'"


async def test_search_text_in_subdir_and_single_file(workspace: Path) -> None:
    assert await call("fs.search_text", workspace, query="hello", path="src") == (
        "src/pkg/app.py:4: return 'Hello'"
    )
    assert await call("fs.search_text", workspace, query="demo", path="README.md") == (
        "README.md:1: # Demo"
    )


async def test_search_text_respects_max_results(workspace: Path) -> None:
    (workspace / "many.txt").write_text("needle\n" * 10)
    lines = (await call("fs.search_text", workspace, query="needle", max_results=3)).splitlines()
    assert lines[:3] == ["many.txt:1: needle", "many.txt:2: needle", "many.txt:3: needle"]
    assert len(lines) == 4
    assert "max_results=3" in lines[3]
    exact = await call("fs.search_text", workspace, query="needle", max_results=10)
    assert len(exact.splitlines()) == 10
    assert "max_results" not in exact


async def test_search_text_skips_hidden_cache_binary_and_oversized(workspace: Path) -> None:
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("needle\n")
    (workspace / "src" / "__pycache__").mkdir()
    (workspace / "src" / "__pycache__" / "app.txt").write_text("needle\n")
    (workspace / "blob.bin").write_bytes(b"\0needle\n")
    (workspace / "huge.txt").write_text("needle\n" + "a" * 200)
    (workspace / "ok.txt").write_text("a needle\n")
    tool = BUILTIN_TOOLS["fs.search_text"]
    output = await tool.run({"query": "needle"}, workspace, max_file_bytes=100)
    assert output == "ok.txt:1: a needle"


async def test_search_text_skips_symlinks_leaving_root(workspace: Path) -> None:
    (workspace / "leak.txt").symlink_to(workspace.parent / "secret.txt")
    (workspace / "leakdir").symlink_to(workspace.parent)
    (workspace / "inside.txt").symlink_to("README.md")
    output = await call("fs.search_text", workspace, query="hello")
    assert "secret" not in output
    assert "inside.txt:2: Say hello to the world." in output.splitlines()


async def test_search_text_cuts_long_lines_and_reports_no_matches(workspace: Path) -> None:
    (workspace / "wide.txt").write_text("   needle" + "x" * 500 + "\n")
    output = await call("fs.search_text", workspace, query="needle", path="wide.txt")
    assert output == "wide.txt:1: needle" + "x" * 194
    nothing = await call("fs.search_text", workspace, query="absent")
    assert nothing == "No matches for 'absent' in '.'."


# --- the contracts -----------------------------------------------------------------------------

EXAMPLES: dict[str, dict[str, Any]] = {
    "fs.list_dir": {"path": "src"},
    "fs.read_file": {"path": "src/pkg/app.py", "offset": 0, "limit": 10},
    "fs.search_text": {"query": "hello", "path": ".", "max_results": 5},
}

INVALID: dict[str, list[dict[str, Any]]] = {
    "fs.list_dir": [{"path": "x" * 1025}, {"path": 3}],
    "fs.read_file": [{}, {"path": "a", "limit": 0}, {"path": "a", "limit": 2001}, {"path": ""}],
    "fs.search_text": [{}, {"query": ""}, {"query": "a", "max_results": 201}],
}


def test_builtin_tools_are_the_three_fs_tools() -> None:
    assert sorted(BUILTIN_TOOLS) == ["fs.list_dir", "fs.read_file", "fs.search_text"]
    for name, tool in BUILTIN_TOOLS.items():
        assert tool.contract.metadata.name == name
        # 1.1.0: entries refused by policy are skipped, hard-linked files refused (ADR 0005).
        assert tool.contract.metadata.version == "1.1.0"
        assert tool.contract.api_version == "corral.dev/v1"
        assert tool.contract.kind == "Tool"
        assert tool.contract.spec.type == "builtin"
        assert tool.contract.spec.side_effect == "read"


def test_builtin_tool_documents_validate_with_their_schemas_compiled() -> None:
    # _fs builds them with SCHEMA_CHECKED (no jsonschema_rs at import): a document that only
    # validates that way would be refused when a user applies it.
    for tool in BUILTIN_TOOLS.values():
        document = tool.contract.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert Tool.model_validate(document) == tool.contract


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_input_schema_is_valid_and_tight(name: str) -> None:
    schema = BUILTIN_TOOLS[name].contract.spec.input_schema
    validator = jsonschema_rs.validator_for(schema)
    assert schema["additionalProperties"] is False
    assert validator.is_valid(EXAMPLES[name])
    assert not validator.is_valid({**EXAMPLES[name], "extra": 1})
    for arguments in INVALID[name]:
        assert not validator.is_valid(arguments), arguments


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_example_arguments_run(workspace: Path, name: str) -> None:
    assert await call(name, workspace, **EXAMPLES[name])


async def test_a_store_with_the_previous_fs_tools_upgrades(settings: Settings) -> None:
    # A store where a Corral before ADR 0005 registered the fs tools as 1.0.0: starting this
    # Corral records the changed tools as new versions instead of refusing to start.
    previous = {}
    for name, tool in BUILTIN_TOOLS.items():
        document = tool.contract.model_dump(mode="json", by_alias=True, exclude_none=True)
        document["metadata"]["version"] = "1.0.0"
        document["spec"]["description"] = f"{name}, as shipped before path guards."
        previous[name] = BuiltinTool(Tool.model_validate(document), tool.run)
    old = Platform(settings, builtins=previous)
    await old.start()
    await old.close()
    platform = Platform(settings)
    await platform.start()
    try:
        async with platform.store.read("default") as session:
            tools = await list_tools(session, tenant_id="default")
    finally:
        await platform.close()
    versions = {tool.name: version.version for tool, version in tools}
    assert {name: versions[name] for name in BUILTIN_TOOLS} == dict.fromkeys(BUILTIN_TOOLS, "1.1.0")
