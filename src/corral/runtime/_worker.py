"""Workers: claim runnable runs with a lease and drive them with :class:`RunExecutor`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update

from corral.audit import append_event
from corral.runtime._loop import LeaseLost, RunExecutor
from corral.runtime._tables import RunRow
from corral.store import Store, skip_locked, utcnow

__all__ = ["Worker", "default_worker_id"]

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    """``<host>:<pid>:<8 hex>``: unique per process, readable in ``lease_owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims runs from the runs table and executes up to ``concurrency`` of them at once.

    A run is claimable when ``QUEUED``, or ``RUNNING`` with an expired lease (its worker died).

    Args:
        store: The store.
        executor: Executes one claimed run.
        worker_id: Unique id of this worker (``lease_owner``).
        concurrency: Runs driven at once.
        poll_interval_seconds: Wait between claims when nothing is runnable.
        lease_seconds: Lease length; renewed every third of it while a run is active.
    """

    def __init__(
        self,
        store: Store,
        executor: RunExecutor,
        *,
        worker_id: str | None = None,
        concurrency: int = 16,
        poll_interval_seconds: float = 0.2,
        lease_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.executor = executor
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.poll_interval = poll_interval_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look for runnable runs now (called after creating a run in the same process)."""
        self._wakeup.set()

    async def claim(self) -> str | None:
        """Lease one runnable run to this worker; returns its id, or ``None``."""
        now = utcnow()
        candidate = skip_locked(
            select(RunRow.id)
            .where(
                or_(
                    RunRow.status == "QUEUED",
                    and_(RunRow.status == "RUNNING", RunRow.lease_expires_at < now),
                )
            )
            .order_by(RunRow.created_at)
            .limit(1),
            self.store.dialect,
        ).scalar_subquery()
        async with self.store.transaction() as session:
            row = (
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id == candidate)
                    .values(
                        status="RUNNING",
                        lease_owner=self.worker_id,
                        lease_expires_at=now + self.lease,
                        started_at=func.coalesce(RunRow.started_at, now),
                        updated_at=now,
                    )
                    .returning(RunRow.id, RunRow.tenant_id, RunRow.trace_id, RunRow.step_count)
                )
            ).one_or_none()
            if row is not None:
                await append_event(
                    session,
                    tenant_id=row.tenant_id,
                    actor=f"worker:{self.worker_id}",
                    action="run.leased",
                    subject=f"run:{row.id}",
                    outcome="success",
                    run_id=row.id,
                    trace_id=row.trace_id,
                    details={"from_step": row.step_count},
                )
        return None if row is None else str(row.id)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and execute runs until ``stop`` is set; then wait for active runs to checkpoint."""
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        try:
            while not stop.is_set():
                if len(self._active) < self.concurrency and await self._claim_and_start():
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await _first(stop.wait(), self._wakeup.wait())
        finally:
            heartbeat.cancel()
            for task in list(self._active.values()):
                task.cancel()
            await asyncio.gather(*self._active.values(), heartbeat, return_exceptions=True)

    async def run_until_idle(self) -> None:
        """Execute runnable runs until none is left and none is active (for tests and scripts)."""
        while True:
            while len(self._active) < self.concurrency and await self._claim_and_start():
                pass
            if not self._active:
                return
            await asyncio.wait(list(self._active.values()), return_when=asyncio.FIRST_COMPLETED)

    async def _claim_and_start(self) -> bool:
        run_id = await self.claim()
        if run_id is None:
            return False
        task = asyncio.create_task(self._execute(run_id), name=f"run {run_id}")
        self._active[run_id] = task
        task.add_done_callback(lambda _: self._active.pop(run_id, None))
        return True

    async def _execute(self, run_id: str) -> None:
        try:
            await self.executor.execute(run_id, self.worker_id)
        except LeaseLost:
            log.warning("lease on run %s passed to another worker; stopped driving it", run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s failed inside the runtime", run_id)
            await self._fail(run_id, exc)

    async def _fail(self, run_id: str, exc: Exception) -> None:
        """A bug must not strand a run: end it FAILED with the error (invariant 12)."""
        now = utcnow()
        async with self.store.transaction() as session:
            row = (
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id == run_id, RunRow.lease_owner == self.worker_id)
                    .values(
                        status="FAILED",
                        terminal_reason="internal_error",
                        error=f"{type(exc).__name__}: {exc}",
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                    )
                    .returning(RunRow.tenant_id, RunRow.trace_id)
                )
            ).one_or_none()
            if row is not None:
                await append_event(
                    session,
                    tenant_id=row.tenant_id,
                    actor=f"worker:{self.worker_id}",
                    action="run.finished",
                    subject=f"run:{run_id}",
                    outcome="failed",
                    run_id=run_id,
                    trace_id=row.trace_id,
                    details={"terminal_reason": "internal_error"},
                )

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        interval = self.lease.total_seconds() / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
            if self._active:
                now = utcnow()
                async with self.store.transaction() as session:
                    await session.execute(
                        update(RunRow)
                        .where(RunRow.lease_owner == self.worker_id, RunRow.status == "RUNNING")
                        .values(lease_expires_at=now + self.lease)
                    )


async def _first(*awaitables: object) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
