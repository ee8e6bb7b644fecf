"""The base of the test doubles that serve plain HTTP from a thread (OIDC, upstream, OTLP)."""

from __future__ import annotations

import abc
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

__all__ = ["ThreadedHTTPServer"]


class ThreadedHTTPServer(abc.ABC):
    """A :class:`~http.server.ThreadingHTTPServer` on a free port, served in a daemon thread.

    A thread of its own, so it answers while the test's event loop waits on the client; one
    more thread per connection. Subclasses give the request handler; use :meth:`start` and
    :meth:`stop` or a ``with`` block.

    Args:
        host: Interface to listen on; the port is picked by the system (port 0).
        thread_name: Name of the serving thread (in thread dumps of a hung test).
    """

    def __init__(self, *, host: str = "127.0.0.1", thread_name: str) -> None:
        self._host = host
        self._thread_name = thread_name
        self._port: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class; called once per :meth:`start`."""

    @property
    def _url(self) -> str:
        """``http://<host>:<port>``, once started (a stopped server keeps its address).

        Raises:
            RuntimeError: it was never started.
        """
        if self._port is None:
            raise RuntimeError(
                f"the {type(self).__name__} is not started; call start() or use it in a "
                "`with` block"
            )
        return f"http://{self._host}:{self._port}"

    def start(self) -> Self:
        """Listen on a free port of the host and serve in a daemon thread."""
        self._server = ThreadingHTTPServer((self._host, 0), self._handler())
        self._server.daemon_threads = True
        self._port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self._thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
