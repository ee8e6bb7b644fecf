"""The standard loop as an explicit state machine, checkpointed one step at a time.

Phases of one step (DESIGN.md, "The main job")::

    CHECK (cancel, kill switch, budgets) -> CALL_MODEL -> CALL_TOOLS -> CHECKPOINT -> CHECK ...
    any phase -> FINISH (final answer, budget, cancel, kill, model error): the last checkpoint
    CALL_TOOLS -> PAUSE (IN_DOUBT, AWAITING_APPROVAL): the run gives up its lease and waits

Everything one step produced (step row, tool-call rows, run counters and lease, audit events,
run events, spans) commits in one transaction, fenced on the worker's lease (``lease_owner``
and ``lease_epoch``): a worker whose lease was taken over writes nothing and stops with
:class:`~corral.errors.LeaseLost`. A worker that dies loses at most the step in
progress; the next worker rebuilds the context from the checkpoints and continues from the next
step, or, if a side-effecting call had started, from that step's recorded decision.

This module holds the driver (:class:`RunExecutor`: the phase loop and the CHECK phase); the
other phases are its private mixins: CALL_MODEL in :mod:`corral.runtime._model_phase` (costs
in :mod:`~corral.runtime._metering`, the reply's checks in :mod:`~corral.runtime._decision`),
CALL_TOOLS in :mod:`~corral.runtime._tool_phase`, CHECKPOINT and FINISH in
:mod:`~corral.runtime._checkpoint`, and loading a run to drive in :mod:`~corral.runtime._resume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from opentelemetry import trace
from opentelemetry.trace import Span

from corral.costs import Budgets
from corral.gateway.models import ModelGateway, Pricer
from corral.gateway.tools import ResolvedTool, ToolGateway
from corral.observability import (
    RUNS_IN_FLIGHT,
    Tracing,
    bind_log_context,
    get_logger,
    observe_step,
)
from corral.policy import Governance
from corral.runtime._checkpoint import Checkpointing
from corral.runtime._model_phase import ModelPhase
from corral.runtime._persist import LoadedRun
from corral.runtime._resume import Resume
from corral.runtime._state import Pause, RunState, StepRecord, Terminal, signal_terminal
from corral.runtime._tool_phase import LeaseLost
from corral.store import Store, utcnow
from corral.tenancy import Quotas

__all__ = ["LeaseLost", "Phase", "RunExecutor"]

log = get_logger(__name__)


class Phase(enum.Enum):
    """Where the loop is within a step."""

    CHECK = "check"
    CALL_MODEL = "call_model"
    CALL_TOOLS = "call_tools"
    CHECKPOINT = "checkpoint"


class RunExecutor(ModelPhase, Checkpointing, Resume):
    """Executes leased runs with the standard loop.

    Args:
        store: The store holding runs, steps and the audit chain.
        models: The model gateway.
        tools: The tool gateway.
        tracing: Where spans go (drained into each step's transaction).
        lease: Lease length, renewed at every checkpoint.
        governance: Decides ``model.call`` and ``tool.call``; ``None`` decides nothing (tests
            of the bare loop).
        approval_ttl: Lifetime of the approval requests the loop raises.
        clock: Current UTC time, for lease expiry and the wall-clock budget (tests pass a
            :class:`corral.testing.ManualClock`; it must be the worker's clock).
    """

    def __init__(
        self,
        store: Store,
        models: ModelGateway,
        tools: ToolGateway,
        tracing: Tracing,
        *,
        lease: timedelta = timedelta(seconds=15),
        governance: Governance | None = None,
        approval_ttl: timedelta = timedelta(days=1),
        quotas: Quotas | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.clock = clock
        self.quotas = quotas
        self.models = models
        self.tools = tools
        self.tracing = tracing
        self.lease = lease
        self._tools: dict[tuple[str, str, str], ResolvedTool] = {}
        self._running: dict[str, RunState] = {}
        self.governance = governance
        self.approval_ttl = approval_ttl
        self._refreshing: dict[str, asyncio.Lock] = {}
        self.budgets = Budgets(store)
        self.pricer = Pricer(quotas.settings.model_prices if quotas is not None else {})

    def abort(self, run_id: str) -> None:
        """Interrupt the run's in-flight model call or tool sequence.

        The worker calls it when it sees a recorded cancel or kill switch; the loop then reads
        the signals and ends the run.
        """
        state = self._running.get(run_id)
        if state is not None:
            state.abort.set()

    def running_states(self) -> list[RunState]:
        """The runs this executor is driving now."""
        return list(self._running.values())

    async def execute(
        self,
        run_id: str,
        worker_id: str,
        *,
        lease_epoch: int | None = None,
        loaded: LoadedRun | None = None,
    ) -> str:
        """Drive a run this worker has leased until it is terminal or paused.

        Args:
            run_id: The run.
            worker_id: The worker holding its lease.
            lease_epoch: The run's ``lease_epoch`` as this worker's claim set it (see
                :class:`~corral.runtime._persist.Claimed`). ``None`` reads it from the run,
                which then must be ``RUNNING`` under ``worker_id``'s lease.
            loaded: The run as the claim read it (``Claimed.loaded``); ``None``: read now.

        Returns:
            The status it ended in (terminal, ``IN_DOUBT`` or ``AWAITING_APPROVAL``).

        Raises:
            LeaseLost: the run was claimed again since this worker's claim (by another worker,
                or by this one after the lease expired): this worker's unwritten work is
                discarded; the new owner goes on from the last checkpoint.
        """
        state = await self._load(run_id, worker_id, lease_epoch, loaded)
        actor = f"worker:{worker_id}"
        tracer = self.tracing.tracer
        with self.tracing.trace(state.trace_id):
            root = tracer.start_span(f"invoke_agent {state.agent_name}")
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", state.agent_name)
        root.set_attribute("corral.run.id", run_id)
        self._running[run_id] = state
        RUNS_IN_FLIGHT.inc()
        try:
            with trace.use_span(root, end_on_exit=False), _log_context(state):
                status = await self._loop(state, worker_id, actor, root)
                log.debug("run segment ended", status=status, steps=state.step_count)
                return status
        except BaseException:
            if root.is_recording():  # a refused final checkpoint ended it already
                root.end()
            self.tracing.exporter.discard(state.trace_id)
            raise
        finally:
            RUNS_IN_FLIGHT.dec()
            # Only this execution's entry: a newer claim of the run may be driving it now.
            if self._running.get(run_id) is state:
                del self._running[run_id]

    async def _loop(self, state: RunState, worker_id: str, actor: str, root: Span) -> str:
        record: StepRecord | None = state.pending
        terminal: Terminal | None = None
        phase = Phase.CALL_TOOLS if record is not None else Phase.CHECK
        step_started = time.perf_counter()
        while True:
            if phase is Phase.CHECK:
                terminal = self._check(state)
                phase = Phase.CHECKPOINT if terminal else Phase.CALL_MODEL
            elif phase is Phase.CALL_MODEL:
                record, terminal = await self._call_model(state, worker_id)
                wants_tools = record is not None and record.kind == "tool_calls"
                phase = Phase.CALL_TOOLS if wants_tools and terminal is None else Phase.CHECKPOINT
            elif phase is Phase.CALL_TOOLS:
                assert record is not None
                outcome = await self._call_tools(state, record, worker_id, actor)
                if isinstance(outcome, Pause):
                    root.set_attribute("corral.run.status", outcome.status)
                    root.end()
                    await self._flush_spans(state)
                    return outcome.status
                terminal, phase = outcome, Phase.CHECKPOINT
            elif phase is Phase.CHECKPOINT:
                await self._checkpoint(state, record, terminal, worker_id, actor, root)
                if record is not None:
                    now = time.perf_counter()
                    observe_step(state.agent_name, now - step_started, trace_id=state.trace_id)
                    step_started = now
                if terminal is not None:
                    return terminal.status
                phase, record = Phase.CHECK, None

    def _check(self, state: RunState) -> Terminal | None:
        stop = signal_terminal(state.signals)
        if stop is not None:
            return stop
        limits = state.spec.limits
        if self.clock() - state.started_at >= timedelta(seconds=limits.max_wall_clock_seconds):
            return Terminal(
                "TIMED_OUT",
                "max_wall_clock_seconds",
                error=f"the run exceeded {limits.max_wall_clock_seconds} s",
            )
        if state.iterations >= limits.max_iterations:
            return Terminal(
                "BUDGET_EXCEEDED",
                "max_iterations",
                error=f"the run used all {limits.max_iterations} iterations",
            )
        return None


def _log_context(state: RunState) -> contextlib.AbstractContextManager[None]:
    """Every log line of the run's execution carries its ids (the span ids come per line)."""
    return bind_log_context(
        run_id=state.run_id,
        tenant_id=state.tenant_id,
        principal=state.requested_by or None,
    )
