"""Readiness: whether this process can serve, as a list of named checks.

``GET /healthz`` is liveness (the process answers; no I/O). ``GET /readyz`` and
``corral status`` run the checks here and in :meth:`corral.platform.Platform.readiness`: the
store reachable and migrated to this Corral's head revision, the embedded model answering (when
this process runs it), Redis (when configured), the MCP upstreams' last known state (their
circuit breakers; no upstream is called), free disk space under ``CORRAL_HOME`` and the
secrets master key.

The readiness answer is public (a load balancer or an orchestrator asks without credentials),
so a check's ``detail`` says what was found and what to do, in terms an operator can act on, and
never carries a URL, a host, a path, a tenant's name or an exception's text: only setting names,
revisions, counts and the free-space figure.

Statuses: ``ok``; ``fail`` (the process is not ready: ``/readyz`` answers 503); ``warn``
(reported, does not make the process unready: an unreachable upstream of one tenant is not
fixed by taking this replica out of rotation); ``skipped`` (not configured here).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from corral.store import Store, current_revision, head_revision

if TYPE_CHECKING:
    from limits.aio.storage import Storage as AsyncStorage

__all__ = [
    "Check",
    "CheckStatus",
    "Probe",
    "Readiness",
    "RedisClients",
    "check_disk",
    "check_redis",
    "check_store",
    "run_probes",
]

CheckStatus = Literal["ok", "fail", "warn", "skipped"]
"""How one readiness check ended (see the module docstring)."""

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One readiness check's outcome.

    Attributes:
        name: ``store``, ``migrations``, ``local_model``, ``redis``, ``mcp_upstreams``,
            ``disk``, ``master_key``.
        status: See :data:`CheckStatus`.
        detail: What was found and, unless ``ok``, what to do (safe to show anyone).
    """

    name: str
    status: CheckStatus
    detail: str


@dataclass(frozen=True)
class Readiness:
    """Every check's outcome, in a fixed order."""

    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        """Whether no check failed."""
        return all(check.status != "fail" for check in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks."""
        return [check.name for check in self.checks if check.status == "fail"]

    def to_json(self) -> dict[str, object]:
        """``{"status": "ready"|"not_ready", "failed": [...], "checks": {name: {...}}}``."""
        return {
            "status": "ready" if self.ready else "not_ready",
            "failed": self.failed,
            "checks": {
                check.name: {"status": check.status, "detail": check.detail}
                for check in self.checks
            },
        }


@dataclass(frozen=True)
class Probe:
    """A named asynchronous check producing one or more :class:`Check`.

    Attributes:
        names: The names of the checks ``run`` produces (reported failed on a timeout).
        run: Does the check.
    """

    names: tuple[str, ...]
    run: Callable[[], Awaitable[Sequence[Check]]]


async def run_probes(probes: Sequence[Probe], *, timeout_seconds: float) -> Readiness:
    """Run ``probes`` concurrently, each bounded by ``timeout_seconds``.

    A probe that times out or raises fails each of its checks, naming the timeout or the
    exception's type (never its text: it may hold a URL or a path).
    """

    async def bounded(probe: Probe) -> Sequence[Check]:
        try:
            async with asyncio.timeout(timeout_seconds):
                return await probe.run()
        except TimeoutError:
            why = f"no answer within {timeout_seconds:g} s (CORRAL_HEALTH__CHECK_TIMEOUT_SECONDS)"
        except Exception as exc:
            why = f"the check failed with {type(exc).__name__}; see this process's log"
        return [Check(name, "fail", why) for name in probe.names]

    results = await asyncio.gather(*(bounded(probe) for probe in probes))
    return Readiness(tuple(check for checks in results for check in checks))


async def check_store(store: Store) -> list[Check]:
    """``store``: the database answers; ``migrations``: it is at this Corral's head revision."""
    try:
        current = await current_revision(store)
    except Exception as exc:
        return [
            Check(
                "store",
                "fail",
                f"the {store.dialect} store did not answer ({type(exc).__name__}); check that "
                "the database runs and that CORRAL_STORE__URL points at it",
            ),
            Check("migrations", "skipped", "the store did not answer"),
        ]
    reachable = Check("store", "ok", f"{store.dialect} answers")
    head = head_revision()
    if current == head:
        return [reachable, Check("migrations", "ok", f"at revision {head!r}")]
    return [
        reachable,
        Check(
            "migrations",
            "fail",
            f"the database is at revision {current!r}, this Corral needs {head!r}; run "
            "`corral db upgrade` (the embedded `corral up` migrates at start)",
        ),
    ]


def check_disk(home: Path, *, min_free_mb: int) -> Check:
    """``disk``: at least ``min_free_mb`` MiB free on the file system holding ``home``."""
    try:
        free_mb = shutil.disk_usage(home).free / _MIB
    except OSError as exc:
        return Check(
            "disk",
            "fail",
            f"cannot read the free space under CORRAL_HOME ({type(exc).__name__}); check that "
            "the directory exists and is readable",
        )
    figure = f"{free_mb / 1024:.1f} GiB free under CORRAL_HOME"
    if free_mb >= min_free_mb:
        return Check("disk", "ok", figure)
    return Check(
        "disk",
        "fail",
        f"{figure}, at least {min_free_mb} MiB needed (CORRAL_HEALTH__MIN_FREE_DISK_MB); free "
        "space (old logs, workspaces) or grow the volume",
    )


class RedisClients:
    """The ``redis`` check's storage clients: one per configured URL, kept for the process.

    A client (and its connection pool) is made by the first check that needs it and reused by
    every later one, so a load balancer probing ``/readyz`` every second opens no new
    connection per probe. :meth:`close` (from :meth:`corral.platform.Platform.close`) drops
    their connections; a later check reconnects.
    """

    def __init__(self) -> None:
        self._storages: dict[str, AsyncStorage] = {}

    def storage(self, url: str) -> AsyncStorage:
        """The async ``limits`` storage of ``url`` (``async+`` is prefixed when missing).

        Raises:
            limits.errors.ConfigurationError: the URL's backend needs a missing package
                (Redis: ``coredis``).
        """
        from limits.storage import storage_from_string

        storage = self._storages.get(url)
        if storage is None:
            async_url = url if url.startswith("async+") else f"async+{url}"
            storage = cast("AsyncStorage", storage_from_string(async_url))
            self._storages[url] = storage
        return storage

    def close(self) -> None:
        """Drop every client's connections and forget the clients."""
        storages, self._storages = self._storages, {}
        for storage in storages.values():
            bridge = getattr(storage, "bridge", None)
            if bridge is not None:
                # limits has no close(); its coredis client holds a connection pool.
                pool = getattr(bridge.get_connection(), "connection_pool", None)
                if pool is not None:
                    pool.disconnect()


async def check_redis(
    urls: dict[str, str | None], *, clients: RedisClients | None = None
) -> list[Check]:
    """``redis``: every configured shared-counter storage answers a ping.

    Args:
        urls: Storage URL by the setting that names it (``CORRAL_TOOLS__RATE_LIMIT_STORAGE_URL``
            ...); ``None`` values are not configured. Details name the setting, never the URL.
        clients: The process's clients, reused across checks; without it the check makes its
            own and closes them before it returns.
    """
    configured = {setting: url for setting, url in urls.items() if url}
    if not configured:
        return [Check("redis", "skipped", "no shared rate-limit storage is configured")]
    from limits.errors import ConfigurationError

    own = clients is None
    used = RedisClients() if clients is None else clients
    problems: list[str] = []
    try:
        for setting, url in configured.items():
            try:
                storage = used.storage(url)
            except ConfigurationError:
                problems.append(f"{setting} cannot be used (Redis needs the coredis package)")
                continue
            if not await storage.check():
                problems.append(f"the storage of {setting} does not answer; check that it runs")
    finally:
        if own:
            used.close()
    if problems:
        return [Check("redis", "fail", "; ".join(problems))]
    return [Check("redis", "ok", f"{len(configured)} storage(s) answer")]
