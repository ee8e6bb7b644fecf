"""CLI: ``corral up``, ``corral worker`` and ``corral db upgrade`` (these talk to the store).

The API (FastAPI, its routers, the MCP server SDK) and uvicorn are imported by ``corral up``
only: an idle ``corral worker`` does not hold them in memory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from corral.cli._client import fail
from corral.observability import configure_logging
from corral.platform import Platform
from corral.settings import Settings, get_settings
from corral.store import (
    Store,
    current_revision,
    head_revision,
    upgrade,
)

__all__ = ["db_app", "up", "worker"]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def up(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8420).")] = None,
    local_model: Annotated[
        bool,
        typer.Option(
            "--local-model/--no-local-model", help="Start the embedded SmolLM2-135M model server."
        ),
    ] = True,
) -> None:
    """Start Corral in one process: API, a worker and the embedded model. Ctrl-C stops all.

    Data lives in CORRAL_HOME (default ~/.corral); the SQLite database is migrated on start.
    """
    import uvicorn

    from corral.api import create_app, http_protocol

    base = get_settings()
    api = base.api.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    settings = base.model_copy(update={"api": api})
    if _port_in_use(api.host, api.port):
        fail(
            f"port {api.port} on {api.host} is in use (another Corral?); stop that process or "
            f"choose another port with `corral up --port N` (or CORRAL_API__PORT)."
        )
    if (
        local_model
        and settings.local_model.enabled
        and _port_in_use(settings.local_model.host, settings.local_model.port)
    ):
        fail(
            f"port {settings.local_model.port} for the embedded model is in use; stop that "
            "process or set CORRAL_LOCAL_MODEL__PORT, or start with --no-local-model."
        )
    configure_logging(settings.log)
    # The embedded SQLite store migrates itself; a shared database is migrated deliberately
    # (`corral db upgrade`) and the server refuses to start on one that is behind.
    migrate = settings.store_url.startswith("sqlite")
    if migrate:
        _migrate_in_child(settings)
    platform = Platform(
        settings,
        start_local_model=local_model and settings.local_model.enabled,
        migrate=migrate,
    )
    typer.echo(
        f"Corral {settings.store_url.split('://')[0]} store in {settings.home}; "
        f"API on http://{api.host}:{api.port} (Ctrl-C to stop)"
    )
    # Open event streams would hold shutdown forever; give them a few seconds to finish.
    uvicorn.run(
        create_app(platform, local_admin=True),
        host=api.host,
        port=api.port,
        log_level="warning",
        log_config=None,  # uvicorn's loggers propagate to the structlog handler
        # At "warning" no access line is ever written, yet with the logger reachable uvicorn
        # still formats each request's client address and path for it; off skips that work.
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.api.keep_alive_seconds,
        # uvloop (a dependency, not on Windows) when installed, else asyncio: about 0.3 ms less
        # CPU per proxied model call (benchmarks/README.md, model_gateway.py "Wave 3").
        loop="auto",
        # uvicorn's httptools protocol, answering a response's headers and body in one write.
        http=http_protocol(),
        # No route of Corral's is a WebSocket one (a handshake was refused with 403 anyway);
        # "auto" would import the ``websockets`` package into the idle server.
        ws="none",
    )


def _migrate_in_child(settings: Settings) -> None:
    """Bring the store to the head revision in a short-lived ``corral db upgrade`` process.

    Does nothing when the store is at the head already (one plain SQL read, no alembic). Alembic,
    the migrations and the SQL dialects they import (about 10 MB resident) are then loaded by the
    child only, not by the long-running `corral up` (whose platform start finds the store at
    head). The child is ``sys.executable -m corral db upgrade`` with this process's environment
    and ``CORRAL_STORE__URL`` set to ``settings.store_url``.

    Raises:
        typer.Exit: code 1, after one ``error:`` line naming the database, the child's exit
            code and last line of output, and the command that shows the whole error.
    """

    async def at_head() -> bool:
        store = Store.from_settings(settings)
        try:
            return await current_revision(store) == head_revision()
        finally:
            await store.dispose()

    if asyncio.run(at_head()):
        return
    env = {**os.environ, "CORRAL_STORE__URL": settings.store_url}
    child = subprocess.run(
        [sys.executable, "-m", "corral", "db", "upgrade"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if child.returncode != 0:
        output = (child.stderr.strip() or child.stdout.strip() or "no output").splitlines()[-1]
        url = make_url(settings.store_url).render_as_string(hide_password=True)
        fail(
            f"migrating the database at {url} failed (exit {child.returncode}): {output}; "
            "fix the cause, then run `corral db upgrade` to see the whole error and migrate."
        )


def worker(
    concurrency: Annotated[int | None, typer.Option(help="Runs driven at once.")] = None,
) -> None:
    """Run a worker (no API) against the configured store until Ctrl-C or SIGTERM.

    The store must be migrated (`corral db upgrade`, or `corral up` for the embedded SQLite).
    """
    settings = get_settings()
    _require_database(settings.store_url)
    if concurrency:
        runtime = settings.runtime.model_copy(update={"worker_concurrency": concurrency})
        settings = settings.model_copy(update={"runtime": runtime})
    configure_logging(settings.log)
    asyncio.run(_worker(settings))


def _require_database(store_url: str) -> None:
    """Exit with one line, before anything is written, when the SQLite database does not exist.

    A database that exists but is behind is refused by the platform's start (one line too).
    """
    url = make_url(store_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    if not Path(url.database).exists():
        fail(
            f"no Corral database at {url.database}; create it with `corral db upgrade` "
            "(or start `corral up`, which migrates the embedded store)."
        )


async def _worker(settings: Settings) -> None:
    platform = Platform(settings, migrate=False)
    await platform.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    typer.echo(f"worker {platform.worker.worker_id} polling {settings.store_url.split('://')[0]}")
    try:
        await platform.worker.run(stop)
    finally:
        await platform.close()


db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations to the configured store (CORRAL_STORE__URL)."""

    async def go() -> tuple[str | None, str | None]:
        settings = get_settings()
        store = Store.from_settings(settings)  # as a Platform opens it
        try:
            before = await current_revision(store)
            await upgrade(store)
            return before, await current_revision(store)
        finally:
            await store.dispose()

    before, after = asyncio.run(go())
    if before == after:
        typer.echo(f"database already at {after}")
    else:
        typer.echo(f"database migrated {before or '(empty)'} -> {after} (head {head_revision()})")
