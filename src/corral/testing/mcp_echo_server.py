"""A tiny MCP server for tests of the MCP gateway: ``python -m corral.testing.mcp_echo_server``.

Serves over stdio by default, or Streamable HTTP at ``http://HOST:PORT/mcp`` with
``--http HOST:PORT``. Its tools:

* ``echo(text)``: returns ``text`` (read-only). Its description is read from the file named by
  ``CORRAL_ECHO_DESCRIPTION_FILE`` at every ``tools/list`` (else ``CORRAL_ECHO_DESCRIPTION``,
  else a default), so a test can change it under a running server to trigger a quarantine.
* ``append(line)``: appends ``line`` to the file named by ``CORRAL_ECHO_NOTES`` (a write).
* ``progress(steps)``: reports ``steps`` progress notifications, then returns ``done``.
* ``fail(message)``: returns an ``isError`` result with ``message``.
* ``crash()``: the process exits at once (a dying upstream).
* ``pid()``: the server's process id (tells a restarted session from the old one).
* ``env(name)``: the value of environment variable ``name`` (checks injected credentials).
* ``client_capabilities()``: the capabilities the client declared, as JSON.

With ``--http``, ``CORRAL_ECHO_BEARER`` makes every request need
``Authorization: Bearer <that value>`` (401 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

__all__ = ["DEFAULT_DESCRIPTION", "build_server", "main"]

DEFAULT_DESCRIPTION = "Echoes the given text back."

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _description() -> str:
    path = os.environ.get("CORRAL_ECHO_DESCRIPTION_FILE")
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8").strip()
    return os.environ.get("CORRAL_ECHO_DESCRIPTION", DEFAULT_DESCRIPTION)


def _schema(**properties: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": list(properties),
        "additionalProperties": False,
    }


_READ = types.ToolAnnotations(read_only_hint=True)
_WRITE = types.ToolAnnotations(read_only_hint=False, destructive_hint=False)


_TOOLS: list[tuple[str, str, dict[str, Any], types.ToolAnnotations]] = [
    ("append", "Appends a line to the notes file.", _schema(line="string"), _WRITE),
    ("progress", "Reports progress, then returns done.", _schema(steps="integer"), _READ),
    ("fail", "Fails with the given message.", _schema(message="string"), _READ),
    ("crash", "Exits the server process at once.", _schema(), _READ),
    ("pid", "The server's process id.", _schema(), _READ),
    ("env", "An environment variable's value.", _schema(name="string"), _READ),
    ("client_capabilities", "The capabilities the client declared.", _schema(), _READ),
]


def _tools() -> list[types.Tool]:
    echo = types.Tool(
        name="echo",
        description=_description(),
        input_schema=_schema(text="string"),
        annotations=_READ,
    )
    return [echo] + [
        types.Tool(name=name, description=text, input_schema=schema, annotations=annotations)
        for name, text, schema, annotations in _TOOLS
    ]


def _text(text: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


async def _list_tools(
    ctx: Any, params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=_tools())


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    name = params.name
    if name == "echo":
        return _text(str(args["text"]))
    if name == "append":
        notes = anyio.Path(os.environ["CORRAL_ECHO_NOTES"])
        async with await notes.open("a", encoding="utf-8") as file:
            await file.write(f"{args['line']}\n")
        return _text(f"appended {args['line']!r}")
    if name == "progress":
        steps = int(args["steps"])
        for step in range(1, steps + 1):
            await ctx.session.report_progress(step, steps, f"step {step} of {steps}")
            await anyio.sleep(0.01)
        return _text("done")
    if name == "fail":
        return _text(str(args["message"]), error=True)
    if name == "crash":
        os._exit(3)
    if name == "pid":
        return _text(str(os.getpid()))
    if name == "env":
        return _text(os.environ.get(str(args["name"]), ""))
    if name == "client_capabilities":
        capabilities = ctx.session.client_capabilities
        dumped = (
            {}
            if capabilities is None
            else capabilities.model_dump(by_alias=True, exclude_none=True)
        )
        return _text(json.dumps(dumped, sort_keys=True))
    return _text(f"unknown tool {name!r}", error=True)


def build_server() -> Server[Any]:
    """The server, with the tools described in the module docstring."""
    return Server(
        "corral-echo", version="1.0.0", on_list_tools=_list_tools, on_call_tool=_call_tool
    )


async def _serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _require_bearer(app: Any, token: str) -> Any:
    async def guarded(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
                return
        await app(scope, receive, send)

    return guarded


def main(argv: list[str] | None = None) -> None:
    """Run the server (stdio, or Streamable HTTP with ``--http HOST:PORT``)."""
    parser = argparse.ArgumentParser(prog="python -m corral.testing.mcp_echo_server")
    parser.add_argument(
        "--http", metavar="HOST:PORT", help="serve Streamable HTTP instead of stdio"
    )
    options = parser.parse_args(argv)
    server = build_server()
    if options.http is None:
        anyio.run(_serve_stdio, server)
        return
    import uvicorn

    host, _, port = options.http.rpartition(":")
    app: Any = server.streamable_http_app(host=host)
    token = os.environ.get("CORRAL_ECHO_BEARER")
    if token:
        app = _require_bearer(app, token)
    uvicorn.run(app, host=host, port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
