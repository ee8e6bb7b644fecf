"""The ``McpServer`` kind: validation with file, field and line; versioned, idempotent apply."""

from __future__ import annotations

import pytest

from conftest import PlatformFactory, register
from corral.contracts import KINDS, McpServer, load_documents, parse_document
from corral.errors import InvalidContract
from corral.gateway.mcp import list_servers, tool_name_for

GOOD = """\
apiVersion: corral.dev/v1
kind: McpServer
metadata:
  name: git
spec:
  description: Git over MCP.
  transport: stdio
  command: mcp-server-git
  args: [--repository, /srv/repo]
  env:
    GITHUB_TOKEN: "${secret:github-token}"
  tools:
    allowed: ["git_*"]
    denied: [git_reset]
  call_timeout_seconds: 20
---
apiVersion: corral.dev/v1
kind: McpServer
metadata:
  name: remote
spec:
  description: A remote server.
  transport: streamable_http
  url: https://mcp.example.com/mcp
  headers:
    Authorization: "Bearer ${secret:remote-token}"
"""


def test_a_valid_document_parses_with_defaults() -> None:
    git, remote = (d.contract for d in load_documents(GOOD, source="servers.yaml"))
    assert isinstance(git, McpServer) and isinstance(remote, McpServer)
    assert "McpServer" in KINDS
    assert git.spec.env == {"GITHUB_TOKEN": "${secret:github-token}"}
    assert (git.spec.connect_timeout_seconds, git.spec.call_timeout_seconds) == (30, 20)
    assert git.spec.tools.permits("git_status") and not git.spec.tools.permits("git_reset")
    assert not git.spec.tools.permits("status")
    assert remote.spec.tools.permits("anything")  # allowed defaults to every tool
    assert remote.spec.headers["Authorization"] == "Bearer ${secret:remote-token}"


@pytest.mark.parametrize(
    ("spec", "field", "line", "message"),
    [
        ("  transport: stdio\n  comand: x\n", "spec.comand", 8, "unknown field"),
        ("  transport: stdio\n", "spec", 5, "'command' is required when transport is 'stdio'"),
        ("  transport: sse\n  command: x\n", "spec.transport", 7, "'stdio' or 'streamable_http'"),
        (
            "  transport: streamable_http\n  url: https://x/mcp\n  command: x\n",
            "spec",
            5,
            "'command' not used with transport 'streamable_http'",
        ),
        ("  transport: streamable_http\n  url: ftp://x\n", "spec.url", 8, "should match"),
        (
            "  transport: stdio\n  command: x\n  call_timeout_seconds: 0\n",
            "spec.call_timeout_seconds",
            9,
            "greater than 0",
        ),
        (
            "  transport: stdio\n  command: x\n  env: {'BAD NAME': v}\n",
            "spec.env.BAD NAME.[key]",
            9,
            "should match pattern",
        ),
    ],
)
def test_a_malformed_spec_fails_with_file_field_and_line(
    spec: str, field: str, line: int, message: str
) -> None:
    text = (
        "apiVersion: corral.dev/v1\nkind: McpServer\nmetadata:\n  name: broken\nspec:\n"
        f"  description: Broken.\n{spec}"
    )
    with pytest.raises(InvalidContract) as caught:
        load_documents(text, source="broken.yaml")
    [issue] = [i for i in caught.value.issues if i.path == field]
    assert (issue.file, issue.line) == ("broken.yaml", line), caught.value.issues
    assert message in issue.message
    assert f"broken.yaml:{line}: {field}" in caught.value.message


def test_corral_names_of_upstream_tools() -> None:
    assert tool_name_for("git", "git_status") == "git.git_status"
    assert tool_name_for("everything", "get-sum") == "everything.get-sum"
    assert tool_name_for("legacy", "longRunningOperation") == "legacy.long_running_operation"
    assert tool_name_for("x", "weird name!") == "x.weird_name"
    assert tool_name_for("x", "a" * 80) is None
    assert tool_name_for("x", "!!!") is None


async def test_apply_is_idempotent_and_a_changed_spec_is_a_new_version(
    make_platform: PlatformFactory,
) -> None:
    platform = await make_platform()
    document = parse_document(
        {
            "apiVersion": "corral.dev/v1",
            "kind": "McpServer",
            "metadata": {"name": "clock"},
            "spec": {"description": "Time.", "transport": "stdio", "command": "mcp-server-time"},
        }
    ).model_dump(mode="json", by_alias=True)
    await register(platform, document)
    await register(platform, document)
    async with platform.store.read("default") as session:
        [server] = await list_servers(session, tenant_id="default")
    assert (server.name, server.version, server.transport) == ("clock", "0.1.0", "stdio")
    document["spec"]["args"] = ["--local-timezone", "UTC"]
    await register(platform, document)
    async with platform.store.read("default") as session:
        [server] = await list_servers(session, tenant_id="default")
    assert server.version == "0.1.1" and server.tools == []
