"""uvicorn's HTTP protocol with one socket write per response turn instead of two.

uvicorn writes a response's status line and headers as soon as the application sends
``http.response.start``, then the body in a second write: two ``send`` system calls per JSON
answer, and two wake-ups of the client (headers, then body). :class:`CoalescingHttpToolsProtocol`
gives uvicorn's httptools protocol a transport that gathers the writes made in one turn of the
event loop and hands them to the socket together at the end of that turn (before the loop
waits for I/O again), so a response sent at once (``Response``, ``JSONResponse``) leaves in one
write; a streamed body's chunks, which come in later turns, each leave as they come.

Closing the connection sends what is gathered first; nothing else about the connection
changes (flow control, keep-alive and timeouts act on the real transport).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

__all__ = ["CoalescingTransport", "http_protocol"]


class CoalescingTransport:
    """A transport proxy: writes of one event-loop turn go to ``transport`` as one write.

    Args:
        transport: The connection's transport; every other attribute is read from it.
        loop: The event loop the connection runs on.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Gather ``data``; it is written at the end of this turn of the loop."""
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        """Gather every chunk (see :meth:`write`)."""
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what was gathered, in one write (nothing once the transport is closing)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Write what was gathered, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Write what was gathered, then half-close."""
        self.flush()
        self._transport.write_eof()

    @property
    def transport(self) -> asyncio.Transport:
        """The real transport."""
        return self._transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http`` option of uvicorn for Corral's server.

    Returns:
        uvicorn's httptools protocol with :class:`CoalescingTransport` when httptools is
        installed (a dependency), else ``"auto"`` (uvicorn picks h11).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol writing through a :class:`CoalescingTransport`."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

        def handle_websocket_upgrade(self) -> None:
            # The WebSocket protocol takes the connection over with the real transport.
            coalescing = cast(CoalescingTransport, self.transport)
            coalescing.flush()
            self.transport = coalescing.transport
            super().handle_websocket_upgrade()

    return CoalescingHttpToolsProtocol
