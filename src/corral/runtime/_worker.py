"""Workers: claim runnable runs with a lease and drive them with :class:`RunExecutor`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from corral.observability import (
    bind_log_values,
    count_lease_reclaims,
    count_run_finished,
    get_logger,
)
from corral.runtime._loop import LeaseLost, RunExecutor
from corral.runtime._persist import (
    Claimed,
    LoadedRun,
    claim,
    fail_run,
    hand_back,
    renew_leases,
    runs_to_abort,
)
from corral.store import SYSTEM, Store, is_transient_error, utcnow

__all__ = ["Backoff", "Worker", "default_worker_id"]

log = get_logger(__name__)


def default_worker_id() -> str:
    """``<host>:<pid>:<8 hex>``: unique per process, readable in ``lease_owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims runs from the runs table and executes up to ``concurrency`` of them at once.

    A run is claimable when ``QUEUED``, or ``RUNNING`` with an expired lease (its worker died,
    or handed it back).

    Store errors do not end a worker: a failed claim is logged and retried after a capped
    exponential backoff with full jitter. A run that hits a transient store error
    (:func:`corral.store.is_transient_error`: connection refused or dropped, too many
    clients, serialization failure, deadlock, ``database is locked``) is handed back, to be
    claimed again from its last checkpoint after a backoff; only other errors end it
    ``FAILED``. The heartbeat renews the leases of the runs this worker is driving, never of
    others it still owns in the table, so a run it could not hand back or fail is reclaimed
    once its lease expires.

    Args:
        store: The store.
        executor: Executes one claimed run.
        worker_id: Unique id of this worker (``lease_owner``).
        concurrency: Runs driven at once.
        poll_interval: Wait between claims when nothing is runnable (a :meth:`wake` or a run
            finishing ends it early).
        lease: Lease length; renewed every third of it while a run is active.
        signal_poll: How often running runs are checked for cancel requests and kill
            switches, to abandon their in-flight model calls.
        store_retry_initial: Bound of the first backoff after a store error; it doubles with
            each further error in a row.
        store_retry_max: Largest backoff bound.
        clock: Current UTC time, for claims and lease renewals (tests pass a
            :class:`corral.testing.ManualClock`; it must be the executor's clock).

    Periodic work beyond leases and approvals (the releases evaluator, the SLO evaluator)
    is added with :meth:`add_heartbeat_job`.
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
        poll_interval: timedelta = timedelta(seconds=0.2),
        lease: timedelta = timedelta(seconds=15),
        signal_poll: timedelta = timedelta(seconds=1),
        store_retry_initial: timedelta = timedelta(seconds=0.5),
        store_retry_max: timedelta = timedelta(seconds=30),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        self.store = store
        self.executor = executor
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease = lease
        self.signal_poll = signal_poll
        self.backoff = Backoff(store_retry_initial.total_seconds(), store_retry_max.total_seconds())
        self._active: dict[str, asyncio.Task[None]] = {}
        # Tasks driving each run: a stale task of a run this worker claimed again may still
        # be unwinding while the newer one drives it.
        self._driving: Counter[str] = Counter()
        """Runs inside ``executor.execute`` now: the only leases the heartbeat renews."""
        self._claim_failures = 0
        self._handbacks: dict[str, int] = {}
        """Transient failures in a row per run handed back by this worker (its backoff)."""
        self._jobs: list[_HeartbeatJob] = []
        self._wakeup = asyncio.Event()
        self._drained = True
        """The last claim found fewer runnable runs than it asked for: claiming again before a
        run finishes or :meth:`wake` is called would most likely find nothing."""

    def add_heartbeat_job(self, interval: timedelta, job: Callable[[], Awaitable[object]]) -> None:
        """Run ``job()`` from the heartbeat every ``interval``, as a task of its own.

        A slow job never delays lease renewals; a job still running when it is due again is
        not started twice. ``job`` must handle its own errors (they are logged otherwise).
        """
        self._jobs.append(_HeartbeatJob(interval.total_seconds(), job))

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
        claimed = await self.store.run_sync(
            functools.partial(
                claim,
                worker_id=self.worker_id,
                now=now,
                lease=self.lease,
                dialect=dialect,
                limit=limit,
                load=True,
            ),
            SYSTEM,
        )
        count_lease_reclaims(sum(c.reclaimed for c in claimed))
        return claimed

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and execute runs until ``stop`` is set; then wait for active runs to checkpoint."""
        heartbeat = asyncio.create_task(self._heartbeat(stop))
        try:
            while not stop.is_set():
                try:
                    started = len(self._active) < self.concurrency and (
                        await self._claim_and_start()
                    )
                except Exception as exc:
                    await self._claim_failed(exc, stop)
                    continue
                self._claim_failures = 0
                if started:
                    continue
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval.total_seconds()):
                        await _first(stop.wait(), self._wakeup.wait())
        finally:
            heartbeat.cancel()
            jobs = [job.task for job in self._jobs if job.task is not None]
            for task in [*self._active.values(), *jobs]:
                task.cancel()
            await asyncio.gather(*self._active.values(), *jobs, heartbeat, return_exceptions=True)

    async def run_until_idle(self) -> None:
        """Execute runnable runs until none is left and none is active (for tests and scripts)."""
        while True:
            while len(self._active) < self.concurrency and await self._claim_and_start():
                if self._drained:  # nothing more to claim until a run finishes
                    break
            if not self._active:
                return
            await asyncio.wait(list(self._active.values()), return_when=asyncio.FIRST_COMPLETED)

    async def _claim_failed(self, exc: Exception, stop: asyncio.Event) -> None:
        """Log a failed claim and wait out the backoff (or until ``stop``)."""
        self._claim_failures += 1
        delay = self.backoff.delay(self._claim_failures)
        log.warning(
            "claiming runs failed (%d in a row; %s: %s); retrying in %.1f s",
            self._claim_failures,
            type(exc).__name__,
            exc,
            delay,
            exc_info=not is_transient_error(exc),
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()

    async def _claim_and_start(self) -> bool:
        # Claim as many runs as there are free slots (at most 32 per transaction), so a burst
        # of runs starts together instead of one claim transaction at a time.
        free = min(self.concurrency - len(self._active), 32)
        claimed = await self._claim(free) if free > 0 else []
        self._drained = len(claimed) < free
        for lease in claimed:
            run_id = lease.run_id
            task = asyncio.create_task(
                self._execute(run_id, lease.lease_epoch, lease.loaded), name=f"run {run_id}"
            )
            self._active[run_id] = task
            task.add_done_callback(functools.partial(self._forget, run_id))
        return bool(claimed)

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        # Only this task's entry: the run may have been re-claimed by a newer task meanwhile.
        if self._active.get(run_id) is task:
            del self._active[run_id]
        if not self._drained:  # runnable runs are waiting for this slot
            self._wakeup.set()

    async def _execute(self, run_id: str, epoch: int, loaded: LoadedRun | None = None) -> None:
        error: Exception | None = None
        bind_log_values(run_id=run_id, worker_id=self.worker_id)  # this run's task only
        self._driving[run_id] += 1
        try:
            await self.executor.execute(run_id, self.worker_id, lease_epoch=epoch, loaded=loaded)
        except LeaseLost:
            log.warning("lease %d on run %s was taken over; stopped driving it", epoch, run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        finally:
            self._driving[run_id] -= 1
            if self._driving[run_id] <= 0:
                del self._driving[run_id]
        if error is None:
            self._handbacks.pop(run_id, None)
        elif is_transient_error(error):
            await self._hand_back(run_id, epoch, error)
        else:
            log.error("run %s failed inside the runtime", run_id, exc_info=error)
            self._handbacks.pop(run_id, None)
            await self._fail(run_id, epoch, error)

    async def _hand_back(self, run_id: str, epoch: int, exc: Exception) -> None:
        """A transient store error: let the run be claimed again later, from its checkpoint."""
        if len(self._handbacks) >= 10_000:  # runs another worker finished; forget them
            self._handbacks.clear()
        failures = self._handbacks[run_id] = self._handbacks.get(run_id, 0) + 1
        delay = self.backoff.delay(failures)
        log.warning(
            "run %s hit a transient store error (%s: %s); handing it back for a retry in %.1f s",
            run_id,
            type(exc).__name__,
            exc,
            delay,
        )
        retry_at = self.clock() + timedelta(seconds=delay)
        try:
            await self.store.run_sync(
                functools.partial(
                    hand_back,
                    run_id=run_id,
                    worker_id=self.worker_id,
                    retry_at=retry_at,
                    lease_epoch=epoch,
                ),
                SYSTEM,
            )
        except Exception:
            log.warning(
                "handing back run %s failed too; it is claimable once its lease expires",
                run_id,
                exc_info=True,
            )

    async def _fail(self, run_id: str, epoch: int, exc: Exception) -> None:
        """A bug must not strand a run: end it FAILED with the error (invariant 12).

        When that write fails too, the run is left ``RUNNING``: no longer driven, its lease is
        not renewed, and a worker reclaims it once the lease expires.
        """
        error, now = f"{type(exc).__name__}: {exc}", utcnow()
        try:
            ended = await self.store.run_sync(
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
        except Exception:
            ended = False
            log.warning(
                "recording the failure of run %s failed; it is reclaimed once its lease expires",
                run_id,
                exc_info=True,
            )
        if ended:
            count_run_finished("FAILED", "internal_error")

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Renew leases every third of the lease; check running runs for signals more often."""
        renew_every = self.lease.total_seconds() / 3
        last_renewal = self.clock()
        last_sweep = float("-inf")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.signal_poll.total_seconds(), renew_every)):
                    await stop.wait()
            if asyncio.get_running_loop().time() - last_sweep >= self.approval_sweep_seconds:
                last_sweep = asyncio.get_running_loop().time()
                await self._expire_approvals()
            for job in self._jobs:
                job.start_if_due(asyncio.get_running_loop().time())
            if not self._driving:
                continue
            now = self.clock()
            try:
                await self.check_signals()
                if (now - last_renewal).total_seconds() >= renew_every:
                    await self.renew_leases()
                    last_renewal = now
            except Exception:
                log.warning("heartbeat failed; the next one tries again", exc_info=True)

    async def renew_leases(self) -> list[str]:
        """Extend the leases of the runs this worker is driving now.

        Returns:
            The ids of the runs whose leases were renewed (if this worker still holds them).
        """
        driving = sorted(self._driving)
        await self.store.run_sync(
            functools.partial(
                renew_leases,
                worker_id=self.worker_id,
                run_ids=driving,
                expires_at=self.clock() + self.lease,
            ),
            SYSTEM,
        )
        return driving

    async def run_heartbeat_jobs(self) -> None:
        """Run every :meth:`add_heartbeat_job` job now, one after the other (errors are logged).

        What the heartbeat does over time, at once: for tests and tools that drive the
        worker with an explicit clock.
        """
        for job in self._jobs:
            await _logged(job.job)

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


class _HeartbeatJob:
    """A periodic job of the heartbeat (:meth:`Worker.add_heartbeat_job`)."""

    def __init__(self, interval_seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        self.interval_seconds = interval_seconds
        self.job = job
        self.last_start = float("-inf")
        self.task: asyncio.Task[object] | None = None

    def start_if_due(self, now: float) -> None:
        """Start the job if ``interval_seconds`` passed since its last start and it is done."""
        if now - self.last_start < self.interval_seconds:
            return
        if self.task is not None and not self.task.done():
            return
        self.last_start = now
        self.task = asyncio.create_task(_logged(self.job), name="heartbeat job")


async def _logged(job: Callable[[], Awaitable[object]]) -> object:
    try:
        return await job()
    except Exception:
        log.exception("a heartbeat job failed; it runs again at its next interval")
        return None


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th failure in a row waits a random time in ``[0, min(max, initial x 2^(n-1))]``
    seconds ("full jitter", https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/):
    workers that failed together do not retry together.

    Args:
        initial_seconds: Bound of the first wait, in seconds.
        max_seconds: Largest bound, in seconds.
        rng: Source of the jitter (a seeded ``random.Random`` in tests).
    """

    def __init__(
        self, initial_seconds: float, max_seconds: float, *, rng: random.Random | None = None
    ) -> None:
        self.initial = initial_seconds
        self.max = max_seconds
        self._rng = rng or random.Random()

    def bound(self, failures: int) -> float:
        """The largest wait after ``failures`` failures in a row (at least 1), in seconds."""
        exponent = min(max(failures - 1, 0), 62)
        return float(min(self.max, self.initial * 2.0**exponent))

    def delay(self, failures: int) -> float:
        """A random wait in ``[0, bound(failures)]``, in seconds."""
        return self._rng.uniform(0, self.bound(failures))


async def _first(*awaitables: object) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
