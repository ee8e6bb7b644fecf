"""Workers: claim runnable runs with a lease and drive them with :class:`RunExecutor`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from corral.runtime._loop import LeaseLost, RunExecutor
from corral.runtime._persist import Claimed, claim, fail_run, renew_leases, runs_to_abort
from corral.store import SYSTEM, Store, utcnow

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
        signal_poll_seconds: How often running runs are checked for cancel requests and kill
            switches, to abandon their in-flight model calls.
        clock: Current UTC time, for claims and lease renewals (tests pass a
            :class:`corral.testing.ManualClock`; it must be the executor's clock).
    """

    approval_sweep_seconds: float = 5.0
    """How often the heartbeat expires overdue approval requests (their runs end REJECTED)."""

    def __init__(
        self,
        store: Store,
        executor: RunExecutor,
        *,
        worker_id: str | None = None,
        concurrency: int = 16,
        poll_interval_seconds: float = 0.2,
        lease_seconds: float = 15.0,
        signal_poll_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        self.store = store
        self.executor = executor
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.poll_interval = poll_interval_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.signal_poll_seconds = signal_poll_seconds
        self._active: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look for runnable runs now (called after creating a run in the same process)."""
        self._wakeup.set()

    async def claim(self) -> str | None:
        """Lease one runnable run to this worker; returns its id, or ``None``."""
        claimed = await self.claim_many(1)
        return claimed[0] if claimed else None

    async def claim_many(self, limit: int) -> list[str]:
        """Lease up to ``limit`` runnable runs in one transaction; returns their ids."""
        return [c.run_id for c in await self._claim(limit)]

    async def _claim(self, limit: int) -> list[Claimed]:
        now, dialect = self.clock(), self.store.dialect
        return await self.store.run_sync(
            functools.partial(
                claim,
                worker_id=self.worker_id,
                now=now,
                lease=self.lease,
                dialect=dialect,
                limit=limit,
            ),
            SYSTEM,
        )

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
        # Claim as many runs as there are free slots (at most 32 per transaction), so a burst
        # of runs starts together instead of one claim transaction at a time.
        free = min(self.concurrency - len(self._active), 32)
        claimed = await self._claim(free) if free > 0 else []
        for lease in claimed:
            run_id = lease.run_id
            task = asyncio.create_task(
                self._execute(run_id, lease.lease_epoch), name=f"run {run_id}"
            )
            self._active[run_id] = task
            task.add_done_callback(functools.partial(self._forget, run_id))
        return bool(claimed)

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        # Only this task's entry: the run may have been re-claimed by a newer task meanwhile.
        if self._active.get(run_id) is task:
            del self._active[run_id]

    async def _execute(self, run_id: str, epoch: int) -> None:
        try:
            await self.executor.execute(run_id, self.worker_id, lease_epoch=epoch)
        except LeaseLost:
            log.warning("lease %d on run %s was taken over; stopped driving it", epoch, run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s failed inside the runtime", run_id)
            await self._fail(run_id, epoch, exc)

    async def _fail(self, run_id: str, epoch: int, exc: Exception) -> None:
        """A bug must not strand a run: end it FAILED with the error (invariant 12)."""
        error, now = f"{type(exc).__name__}: {exc}", utcnow()
        await self.store.run_sync(
            lambda connection: fail_run(
                connection,
                run_id=run_id,
                worker_id=self.worker_id,
                error=error,
                now=now,
                lease_epoch=epoch,
            ),
            SYSTEM,
        )

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew leases every third of the lease; check running runs for signals more often."""
        renew_every = self.lease.total_seconds() / 3
        last_renewal = self.clock()
        last_sweep = float("-inf")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.signal_poll_seconds, renew_every)):
                    await stop.wait()
            if asyncio.get_running_loop().time() - last_sweep >= self.approval_sweep_seconds:
                last_sweep = asyncio.get_running_loop().time()
                await self._expire_approvals()
            if not self._active:
                continue
            await self.check_signals()
            now = self.clock()
            if (now - last_renewal).total_seconds() >= renew_every:
                last_renewal = now
                await self.store.run_sync(
                    functools.partial(
                        renew_leases, worker_id=self.worker_id, expires_at=now + self.lease
                    ),
                    SYSTEM,
                )

    async def _expire_approvals(self) -> None:
        """Expire overdue approval requests (idle workers too: paused runs hold no worker)."""
        from corral.approvals import expire_approvals  # corral.approvals builds on the runtime

        try:
            await expire_approvals(self.store, now=utcnow())
        except Exception:
            log.exception("expiring approval requests failed; the next heartbeat tries again")

    async def check_signals(self) -> list[str]:
        """Abort the in-flight work of running runs that were cancelled or killed.

        Returns:
            The ids of the runs told to stop.
        """
        running = [
            (state.run_id, state.tenant_id, state.agent_name)
            for state in self.executor.running_states()
        ]
        stop = await self.store.run_sync(functools.partial(runs_to_abort, runs=running), SYSTEM)
        for run_id in stop:
            self.executor.abort(run_id)
        return stop


async def _first(*awaitables: object) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
