"""Pooled client sessions to upstream MCP servers, over the official SDK (``mcp`` 2.x).

One session per (tenant, server): a background task holds an :class:`mcp.Client` open (the
SDK's sessions are async context managers bound to the task that entered them) and calls go
through it from any task. A session whose upstream died is replaced by a new one on the next
call; so is a session whose configuration changed (a new ``McpServer`` version, a rotated
secret).

The client declares no capabilities: no ``roots`` (the filesystem server would replace its
allowed directories with the client's roots), no ``sampling`` and no ``elicitation`` (some
servers list more tools when they are declared, and Corral has no person or model to answer
them). The protocol is negotiated by the SDK's ``mode="auto"``: ``server/discover`` at
2026-07-28, falling back to ``initialize`` at 2025-11-25
(https://modelcontextprotocol.io/specification/2025-11-25/basic/lifecycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from pydantic import ValidationError

from corral import __version__
from corral.audit import canonical_json
from corral.contracts import McpServerSpec
from corral.errors import UpstreamFailed

__all__ = ["McpPool", "ProgressCallback", "SecretRenderer", "upstream_name"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
"""``await progress(progress, total, message)`` for each ``notifications/progress`` of a call."""

SecretRenderer = Callable[[str, str], Awaitable[str]]
"""``await render(tenant_id, template)``: ``template`` with each ``${secret:NAME}`` replaced."""

T = TypeVar("T")

NOT_SENT = "upstream_unreachable"
"""Error code of a failure before the request left Corral (the session could not start): the
tool gateway may retry such a call even for a side-effecting tool."""

_SECRET_MARK = "${secret:"
_LIST_PAGES = 100
"""Most ``tools/list`` pages read in one listing (a server that paginates forever stops here)."""


def upstream_name(server: str) -> str:
    """How errors and breakers name an MCP server: ``mcp:<server>``."""
    return f"mcp:{server}"


@dataclass(frozen=True)
class _Config:
    """A server's transport settings with secrets resolved (never logged or stored)."""

    spec: McpServerSpec
    env: dict[str, str]
    headers: dict[str, str]

    @property
    def has_secrets(self) -> bool:
        """Whether a value came from the credential broker (it may change between calls)."""
        return self.env != self.spec.env or self.headers != self.spec.headers

    @property
    def fingerprint(self) -> str:
        """SHA-256 over everything that needs a new session when it changes."""
        data = {
            "spec": self.spec.model_dump(mode="json"),
            "env": self.env,
            "headers": self.headers,
        }
        return hashlib.sha256(canonical_json(data)).hexdigest()


@dataclass
class _Session:
    """One live upstream connection, held open by its owner task."""

    server: str
    fingerprint: str
    client: Client | None = None
    listing: dict[str, types.Tool] | None = None
    """The tools of the last complete ``tools/list`` on this session (``None``: not listed, or
    the server said its list changed since)."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    dead: bool = False

    @property
    def alive(self) -> bool:
        """Whether the connection can still carry a request."""
        if self.dead or self.client is None:
            return False
        # The SDK's dispatcher marks itself closed when the transport reaches EOF (the
        # process exited, the HTTP stream ended); no public attribute exposes it.
        dispatcher = getattr(self.client.session, "_dispatcher", None)
        return not getattr(dispatcher, "_closed", False)

    async def on_message(self, message: Any) -> None:
        """Forget the listing when the server says its tools changed."""
        if isinstance(message, types.ToolListChangedNotification):
            self.listing = None

    async def close(self) -> None:
        """Stop the owner task (it closes the client and the upstream process)."""
        self.dead = True
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.task


class McpPool:
    """Client sessions to upstream MCP servers, one per (tenant, server), started on demand.

    Args:
        render: Resolves ``${secret:NAME}`` references in ``env`` and ``headers`` values for a
            tenant (the credential broker); ``None``: references are refused.
        log_dir: Directory for the stderr of stdio servers (``mcp-<tenant>-<server>.log``);
            ``None``: discarded.
    """

    def __init__(self, *, render: SecretRenderer | None = None, log_dir: Path | None = None):
        self.render = render
        self.log_dir = log_dir
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._pins_generation: dict[str, int] = {}
        self._fingerprints: dict[int, tuple[McpServerSpec, str]] = {}
        """Fingerprints of specs without secrets, by ``id(spec)`` (the spec is kept alive)."""
        self.starts = 0
        """Sessions started since creation (restarts included)."""

    def pins_changed(self, tenant_id: str) -> None:
        """Say that the tenant's servers or pins changed (a sync, an approval).

        Executors of this process then drop what they cached about them.
        """
        self._pins_generation[tenant_id] = self._pins_generation.get(tenant_id, 0) + 1

    def pins_generation(self, tenant_id: str) -> int:
        """How many times :meth:`pins_changed` was called for the tenant."""
        return self._pins_generation.get(tenant_id, 0)

    async def list_tools(
        self, tenant_id: str, server: str, spec: McpServerSpec
    ) -> list[types.Tool]:
        """Every tool the upstream lists now (all pages, no cache).

        Raises:
            UpstreamFailed: the server cannot be started or reached, or failed the listing.
        """
        session = await self._session(tenant_id, server, spec)
        tools = await self._guard(session, spec, self._list_all(session))
        session.listing = {tool.name: tool for tool in tools}
        return tools

    async def listed_tool(
        self, tenant_id: str, server: str, spec: McpServerSpec, name: str
    ) -> types.Tool | None:
        """The tool ``name`` as the live session lists it (listed once per session).

        Raises:
            UpstreamFailed: as for :meth:`list_tools`.
        """
        session = await self._session(tenant_id, server, spec)
        if session.listing is None:
            tools = await self._guard(session, spec, self._list_all(session))
            session.listing = {tool.name: tool for tool in tools}
        return session.listing.get(name)

    async def call_tool(
        self,
        tenant_id: str,
        server: str,
        spec: McpServerSpec,
        tool: str,
        arguments: dict[str, Any],
        *,
        progress: ProgressCallback | None = None,
    ) -> types.CallToolResult:
        """Call ``tool`` upstream within ``spec.call_timeout_seconds``.

        A result with ``isError`` is returned as is: it is the tool's failure, not the
        connection's.

        Raises:
            UpstreamFailed: the server cannot be started or reached, closed the connection
                during the call (the next call starts a new session), timed out, or answered
                with a JSON-RPC error.
        """
        session = await self._session(tenant_id, server, spec)
        client = session.client
        assert client is not None
        forward = None
        if progress is not None:
            callback = progress

            async def forward(progress: float, total: float | None, message: str | None) -> None:
                await callback(progress, total, message)

        call = client.call_tool(
            tool,
            arguments,
            read_timeout_seconds=spec.call_timeout_seconds,
            progress_callback=forward,
        )
        return await self._guard(session, spec, call)

    async def close(self) -> None:
        """Close every session (stdio servers get their stdin closed, then are stopped)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _list_all(self, session: _Session) -> list[types.Tool]:
        client = session.client
        assert client is not None
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_LIST_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def _guard(self, session: _Session, spec: McpServerSpec, call: Awaitable[T]) -> T:
        """Await ``call`` on ``session``, turning failures into errors naming the server.

        A session whose connection ended is retired (the next call starts a new one).
        """
        name = session.server
        try:
            return await call
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                await self._retire(session)
                raise UpstreamFailed(
                    f"MCP server {name!r} closed the connection during the call (it crashed or "
                    "exited); the next call starts it again",
                    upstream=upstream_name(name),
                    code="mcp_connection_closed",
                ) from None
            if exc.code == REQUEST_TIMEOUT:
                raise UpstreamFailed(
                    f"MCP server {name!r} did not answer within {spec.call_timeout_seconds} s "
                    "(spec.call_timeout_seconds)",
                    upstream=upstream_name(name),
                    retryable=True,
                    code="mcp_timeout",
                ) from None
            raise UpstreamFailed(
                f"MCP server {name!r} answered with error {exc.code}: {exc.message}",
                upstream=upstream_name(name),
                code="mcp_error",
            ) from None
        except ValidationError as exc:
            raise UpstreamFailed(
                f"MCP server {name!r} sent a malformed result: {exc.error_count()} problem(s), "
                f"first: {exc.errors()[0]['msg']}",
                upstream=upstream_name(name),
                code="mcp_malformed_result",
            ) from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            await self._retire(session)
            raise UpstreamFailed(
                f"MCP server {name!r} is unreachable: {type(exc).__name__}: {exc}",
                upstream=upstream_name(name),
                retryable=True,
                code="mcp_unreachable",
            ) from None

    async def _retire(self, session: _Session) -> None:
        session.dead = True
        # Close in the background: a stdio server gets seconds of grace to exit.
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _session(self, tenant_id: str, server: str, spec: McpServerSpec) -> _Session:
        """The live session of (tenant, server) for this configuration; started if needed."""
        config = await self._config(tenant_id, server, spec)
        fingerprint = self._fingerprint(config)
        key = (tenant_id, server)
        session = self._sessions.get(key)
        if session is not None and session.alive and session.fingerprint == fingerprint:
            return session
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None:
                if session.alive and session.fingerprint == fingerprint:
                    return session
                del self._sessions[key]
                await session.close()
            session = await self._start(tenant_id, server, config, fingerprint)
            self._sessions[key] = session
            return session

    def _fingerprint(self, config: _Config) -> str:
        """The config's fingerprint; memoised for specs without secrets (the common case)."""
        if config.has_secrets:
            return config.fingerprint
        known = self._fingerprints.get(id(config.spec))
        if known is not None and known[0] is config.spec:
            return known[1]
        if len(self._fingerprints) >= 1000:
            self._fingerprints.clear()
        fingerprint = config.fingerprint
        self._fingerprints[id(config.spec)] = (config.spec, fingerprint)
        return fingerprint

    async def _config(self, tenant_id: str, server: str, spec: McpServerSpec) -> _Config:
        env = {k: await self._resolve(tenant_id, server, v) for k, v in spec.env.items()}
        headers = {k: await self._resolve(tenant_id, server, v) for k, v in spec.headers.items()}
        return _Config(spec, env, headers)

    async def _resolve(self, tenant_id: str, server: str, value: str) -> str:
        if _SECRET_MARK not in value:
            return value
        if self.render is None:
            raise UpstreamFailed(
                f"MCP server {server!r} references a secret, but no credential broker is "
                "configured in this process",
                upstream=upstream_name(server),
                code="mcp_secret_unavailable",
            )
        return await self.render(tenant_id, value)

    async def _start(
        self, tenant_id: str, server: str, config: _Config, fingerprint: str
    ) -> _Session:
        """Start the owner task and wait for the handshake (``spec.connect_timeout_seconds``).

        Raises:
            UpstreamFailed: the process cannot start, the endpoint refuses, or the handshake
                fails or times out.
        """
        session = _Session(server, fingerprint)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.task = asyncio.get_running_loop().create_task(
            self._own(session, tenant_id, config, ready), name=f"mcp-session {server}"
        )
        timeout = config.spec.connect_timeout_seconds
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.CancelledError:
            await session.close()  # the caller gave up (its own timeout): leave no process
            raise
        except TimeoutError:
            await session.close()
            raise UpstreamFailed(
                f"MCP server {server!r} did not complete the handshake within {timeout} s "
                "(spec.connect_timeout_seconds)",
                upstream=upstream_name(server),
                retryable=True,
                code=NOT_SENT,
            ) from None
        except Exception as exc:
            await session.close()
            raise UpstreamFailed(
                f"MCP server {server!r} could not be started or reached: "
                f"{type(exc).__name__}: {_describe(exc)}",
                upstream=upstream_name(server),
                retryable=not isinstance(exc, FileNotFoundError | PermissionError),
                code=NOT_SENT,
            ) from None
        self.starts += 1
        return session

    async def _own(
        self, session: _Session, tenant_id: str, config: _Config, ready: asyncio.Future[None]
    ) -> None:
        """Hold the client open until the session is closed; report the handshake's outcome."""
        try:
            async with self._transport(tenant_id, session.server, config) as transport:
                client = Client(
                    transport,
                    mode="auto",
                    cache=None,  # a sync must see the upstream's tools as they are now
                    client_info=types.Implementation(name="corral", version=__version__),
                    message_handler=session.on_message,
                )
                async with client:
                    session.client = client
                    if not ready.done():
                        ready.set_result(None)
                    await session.stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            elif not session.stop.is_set():
                log.warning("MCP session %r ended: %s", session.server, _describe(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            session.dead = True
            session.client = None

    @contextlib.asynccontextmanager
    async def _transport(
        self, tenant_id: str, server: str, config: _Config
    ) -> AsyncIterator[AbstractAsyncContextManager[Any]]:
        """The SDK transport for ``config`` (and the resources it needs, closed after)."""
        spec = config.spec
        if spec.transport == "stdio":
            assert spec.command is not None
            params = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=config.env or None, cwd=spec.cwd
            )
            with self._errlog(tenant_id, server) as errlog:
                yield stdio_client(params, errlog=errlog)
            return
        assert spec.url is not None
        timeout = httpx2.Timeout(spec.connect_timeout_seconds, read=spec.call_timeout_seconds)
        async with httpx2.AsyncClient(headers=config.headers, timeout=timeout) as http:
            yield streamable_http_client(spec.url, http_client=http)

    @contextlib.contextmanager
    def _errlog(self, tenant_id: str, server: str) -> Iterator[TextIO]:
        """Where a stdio server's stderr goes: a log file per (tenant, server), or nowhere."""
        if self.log_dir is None:
            with open(os.devnull, "w") as sink:
                yield sink
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"mcp-{tenant_id}-{server}.log"
        with path.open("a", encoding="utf-8") as errlog:
            yield errlog


def _describe(exc: BaseException) -> str:
    """A one-line description of ``exc``, unwrapping exception groups from task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
