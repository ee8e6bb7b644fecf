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
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from corral.audit import AuditRecord
from corral.contracts import Agent, AgentSpec
from corral.costs import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    BudgetLimits,
    Budgets,
    ModelCall,
    estimate_input_tokens,
)
from corral.errors import (
    BudgetExceeded,
    ModelAPIError,
    ModelPriceUnknown,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
)
from corral.gateway.models import (
    FinalAnswer,
    Message,
    ModelGateway,
    ModelRequest,
    ModelResponse,
    Pricer,
    Served,
    ToolDefinition,
    cost_upper_bound,
    repeated_phrase,
)
from corral.gateway.tools import ResolvedTool, ToolGateway
from corral.observability import (
    RUN_ID_ATTRIBUTE,
    RUNS_IN_FLIGHT,
    Tracing,
    bind_log_context,
    count_model_cost,
    count_run_finished,
    get_logger,
    observe_step,
    record_child_span,
)
from corral.policy import (
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    agent_entity,
    decision_row,
)
from corral.runtime._context import (
    decision_document,
    fit_context,
    initial_messages,
    step_messages,
)
from corral.runtime._persist import (
    Checkpoint,
    Lease,
    LoadedRun,
    insert_spans,
    load_run,
    write_checkpoint,
)
from corral.runtime._state import Pause, RunState, StepRecord, Terminal, signal_terminal
from corral.runtime._tool_phase import LeaseLost, ToolPhase, lease_lost, replay_calls
from corral.store import SYSTEM, Store, new_id, utcnow
from corral.tenancy import Quotas

__all__ = ["LAST_ITERATION_NOTICE", "LeaseLost", "Phase", "RunExecutor"]

log = get_logger(__name__)


_PLACEHOLDER = re.compile(r"\s*(<[^<>]{0,40}>|\.\.\.)?\s*")
"""An empty answer, or only a template's placeholder (small models copy ``<short answer>``)."""

LAST_ITERATION_NOTICE = (
    "This is your last step: no more tools. Give your final answer now from what you have."
)


class Phase(enum.Enum):
    """Where the loop is within a step."""

    CHECK = "check"
    CALL_MODEL = "call_model"
    CALL_TOOLS = "call_tools"
    CHECKPOINT = "checkpoint"


class RunExecutor(ToolPhase):
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
        self._specs: dict[str, AgentSpec] = {}
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

    async def _flush_spans(self, state: RunState) -> None:
        """Store the spans of a run segment that ended without a checkpoint (a pause)."""
        spans = self.tracing.exporter.drain(
            state.trace_id, tenant_id=state.tenant_id, run_id=state.run_id
        )
        if spans:
            written = await self.store.run_sync(
                functools.partial(insert_spans, lease=state.lease, spans=spans), state.tenant_id
            )
            if not written:
                raise lease_lost(state)

    async def _call_model(
        self, state: RunState, worker_id: str
    ) -> tuple[StepRecord | None, Terminal | None]:
        spec = state.spec
        building_ns = time.time_ns()  # the context.build span: the step's context packet
        messages = fit_context(state.messages, spec.limits.max_input_tokens)
        tools = [t for t in state.definitions if t.name not in state.resting]
        state.resting = set()
        if state.iterations == spec.limits.max_iterations - 1 and tools:
            # The last iteration offers no tools: the model must answer with what it has,
            # rather than the run ending BUDGET_EXCEEDED mid-investigation.
            messages = [*messages, Message("user", LAST_ITERATION_NOTICE)]
            tools = []
        request = ModelRequest(
            model="",
            messages=list(messages),  # a copy: state.messages grows after the call
            tools=tools,
            temperature=spec.model.temperature,
            max_output_tokens=spec.model.max_output_tokens,
            answer_sources=tuple(state.sources) if spec.answer.cite_sources else None,
        )
        self._context_built(state, request, building_ns)
        started = self.clock()
        await self._refresh_tenant(state.tenant_id)
        limits = await self._budget_limits(state)
        state.estimate_input_tokens = estimate_input_tokens(request)
        state.estimate_output_tokens = request.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        # A provider/model name is its own deployment: decided before the quota check. An
        # alias's deployments are decided by the gateway as it reaches them (with their region).
        direct = "/" in state.models[0]
        refused = await self._authorize_model(state, state.models[0]) if direct else None
        if refused is not None:
            record = StepRecord(
                "model_error", state.models[0], {"error": refused}, started, refused
            )
            return record, Terminal("FAILED", "model_denied", error=refused)
        if self.quotas is not None:
            try:
                await self.quotas.check_model_call(state.tenant_id)
            except QuotaExceeded as exceeded:
                record = StepRecord(
                    "model_error",
                    state.models[0],
                    {"error": exceeded.message},
                    started,
                    exceeded.message,
                )
                return record, Terminal(
                    "BUDGET_EXCEEDED", f"quota:{exceeded.quota}", error=exceeded.message
                )
        if limits.any:
            refusal = await self._reserve(state, limits, worker_id, started)
            if refusal is not None:
                return refusal
        remaining = (
            spec.limits.max_wall_clock_seconds - (started - state.started_at).total_seconds()
        )
        state.iterations += 1
        call = asyncio.ensure_future(
            self.models.complete(
                state.models,
                request,
                run_id=state.run_id,
                # Fallbacks are decided as they are reached (the default model was just now).
                authorize=functools.partial(self._authorize_model, state),
                tenant_id=state.tenant_id,
                cache_ttl=_cache_ttl(spec.model.cache_ttl_seconds),
                residency=spec.data_residency,
            )
        )
        aborted = asyncio.ensure_future(state.abort.wait())
        try:
            done, _ = await asyncio.wait(
                {call, aborted}, timeout=max(remaining, 0.001), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            aborted.cancel()
        if call not in done:  # abandoned: a cancel or kill switch arrived, or time ran out
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, ModelAPIError, PolicyDenied, NotFound):
                await call
            if state.abort.is_set():
                stop = await self._signals_terminal(state, worker_id)
                state.abort.clear()
                return None, stop  # no signal after all: the next step asks again
            error = "the model call did not finish within the wall-clock budget"
            record = StepRecord("model_error", state.models[0], {"error": error}, started, error)
            return record, Terminal("TIMED_OUT", "max_wall_clock_seconds", error=error)
        try:
            model, response = call.result()
        except (ModelAPIError, PolicyDenied, NotFound) as exc:  # NotFound: an unknown alias
            reason = "model_denied" if isinstance(exc, PolicyDenied) else "model_error"
            record = StepRecord(
                "model_error", state.models[0], {"error": exc.message}, started, error=exc.message
            )
            return record, Terminal("FAILED", reason, error=exc.message)
        self._audit_failovers(state, worker_id, response)
        record, terminal = self._decision_record(
            state, model, response, started, withdrawn=not tools
        )
        record.model_call = self._meter(state, model, response)
        return record, terminal

    def _context_built(self, state: RunState, request: ModelRequest, started_ns: int) -> None:
        """Record the ``context.build`` span: what the packet holds (attributes set at once)."""
        record_child_span(
            self.tracing.tracer,
            "context.build",
            started_ns,
            {
                RUN_ID_ATTRIBUTE: state.run_id,
                "corral.context.messages": len(request.messages),
                "corral.context.tools": len(request.tools),
                "corral.context.chars": sum(len(m.content) for m in request.messages),
            },
        )

    async def _budget_limits(self, state: RunState) -> BudgetLimits:
        """The cost budgets of the run's next model call (tenant limits are cached)."""
        limits = state.spec.limits
        tenant_day = None
        if self.quotas is not None:
            tenant_day = (await self.quotas.limits(state.tenant_id)).get("cost_usd_per_day")
        return BudgetLimits(limits.max_cost_usd, limits.max_cost_usd_per_day, tenant_day)

    def _estimate(self, state: RunState, model: str, served: Served | None = None) -> Decimal:
        """The pessimistic cost of the call in progress if ``model`` answers it, US dollars.

        Raises:
            ModelPriceUnknown: ``model`` has no price.
        """
        provider, _, name = model.partition("/")
        price = self.pricer.rates(provider, name, served.price if served is not None else None)
        return cost_upper_bound(price, state.estimate_input_tokens, state.estimate_output_tokens)

    async def _reserve(
        self, state: RunState, limits: BudgetLimits, worker_id: str, started: datetime
    ) -> tuple[StepRecord, Terminal] | None:
        """Reserve the next call's estimate against the run's budgets; the ending, or None.

        One store transaction when a daily budget applies (none for the run budget alone).
        """
        model = state.models[0]
        try:
            amount = await self._alias_estimate(state, model)
            state.reservation = await self.budgets.reserve(
                tenant_id=state.tenant_id,
                amount_usd=amount,
                limits=limits,
                holder=f"worker:{worker_id}",
                run_id=state.run_id,
                agent=state.agent_name,
                run_spent_usd=state.cost_usd,
            )
        except ModelPriceUnknown as exc:
            error = f"{exc.message} (the run has a cost budget, which needs the price)"
            record = StepRecord("model_error", model, {"error": error}, started, error)
            return record, Terminal("FAILED", "model_price_unknown", error=error)
        except BudgetExceeded as exc:
            record = StepRecord("model_error", model, {"error": exc.message}, started, exc.message)
            return record, Terminal("BUDGET_EXCEEDED", exc.limit, error=exc.message)
        return None

    async def _alias_estimate(self, state: RunState, model: str) -> Decimal:
        """The estimate for ``model``; for an alias, its most expensive deployment's.

        Raises:
            ModelPriceUnknown: a deployment has no price.
        """
        if "/" in model:
            return self._estimate(state, model)
        try:
            deployments = await self.models.catalog.resolve(state.tenant_id, model)
        except NotFound:
            return Decimal(0)  # the gateway fails the call naming the known aliases
        return max(
            (self._estimate(state, d.model_name, d.served()) for d in deployments),
            default=Decimal(0),
        )

    def _meter(self, state: RunState, model: str, response: ModelResponse) -> ModelCall:
        """The ledger row of the call just answered; adds its cost to the run's total.

        Priced from the usage at the deployment's price (``response.served.price``), else the
        settings' override, else the price table; a cache hit costs 0; a call without usage is
        billed at its reservation (or the estimate) and flagged. A model without any price
        and no budget to enforce is recorded unpriced (``cost_usd`` ``None``).
        """
        served = response.served
        provider, _, name = model.partition("/")
        if served is not None:
            provider, name = served.provider, served.model
        cost: Decimal | None
        if response.cache_hit:
            cost = Decimal(0)
        elif response.cost_usd is not None:
            cost = response.cost_usd
        elif response.usage_missing:
            reserved = state.reservation
            try:
                cost = (
                    reserved.amount_usd
                    if reserved is not None
                    else self._estimate(state, f"{provider}/{name}")
                )
            except ModelPriceUnknown:
                cost = None
        else:
            price = served.price if served is not None else None
            cost = self.pricer.cost(provider, name, response.usage, price)
        if cost is not None:
            state.cost_usd += cost
        return ModelCall(
            tenant_id=state.tenant_id,
            alias=served.alias if served is not None else model,
            deployment=served.deployment if served is not None else model,
            provider=provider,
            model=name,
            usage=response.usage,
            cost_usd=cost,
            run_id=state.run_id,
            step=state.step_count,
            agent=state.agent_name,
            agent_version=state.agent_version,
            principal=state.requested_by or None,
            region=served.region if served is not None else None,
            cache_hit=response.cache_hit,
            usage_missing=response.usage_missing,
            created_at=self.clock(),
        )

    def _audit_failovers(self, state: RunState, worker_id: str, response: ModelResponse) -> None:
        """One ``model.failover`` audit event per deployment passed over, in the checkpoint."""
        served = response.served
        for attempt in response.attempts:
            state.audit.append(
                AuditRecord(
                    f"worker:{worker_id}",
                    "model.failover",
                    f"model:{attempt.served.alias}",
                    attempt.outcome,
                    run_id=state.run_id,
                    trace_id=state.trace_id,
                    details={
                        "deployment": attempt.served.deployment,
                        "model": f"{attempt.served.provider}/{attempt.served.model}",
                        "region": attempt.served.region,
                        "error": attempt.error[:500],
                        "served_by": None if served is None else served.deployment,
                    },
                )
            )

    def _refusal(self, state: RunState, answer: FinalAnswer, *, withdrawn: bool) -> str | None:
        """Why a final answer is refused as an invalid decision, phrased for the model."""
        if _PLACEHOLDER.fullmatch(answer.text):
            return f"{answer.text.strip()!r} is a placeholder: reply with your actual answer"
        phrase = repeated_phrase(answer.text)
        if phrase is not None:
            return (
                f"your final answer repeats {phrase!r} over and over; answer concisely, in one "
                "or two sentences, and do not repeat yourself"
            )
        if not state.spec.answer.cite_sources:
            return None
        unseen = [path for path in answer.sources if path not in state.sources]
        if unseen:
            return (
                f"you cited {', '.join(map(repr, unseen))}, which no tool call of yours "
                "returned; cite only files you listed, read or found"
            )
        if not answer.sources and state.sources:
            return 'your final answer must cite "sources": the file(s) you read'
        if not answer.sources and not withdrawn:
            return "no tool call has returned a file yet: look at the workspace first"
        return None

    async def _refresh_tenant(self, tenant_id: str) -> None:
        """Let one run at a time reload the tenant's policy engine and quota limits.

        Both are cached for a few seconds; when the cache runs out, every run of the tenant
        that reaches a decision at once would read the store and rebuild the same thing (with
        100 concurrent runs, about one store read per step). Under this lock the first run
        reloads them and the others wait for it and find them cached; while they are fresh the
        lock is never contended.
        """
        lock = self._refreshing.get(tenant_id)
        if lock is None:
            lock = self._refreshing[tenant_id] = asyncio.Lock()
        async with lock:
            if self.governance is not None:
                await self.governance.engine(tenant_id)
            if self.quotas is not None:
                await self.quotas.limits(tenant_id)

    async def _authorize_model(
        self, state: RunState, model: str, served: Served | None = None
    ) -> str | None:
        """Decide ``model.call`` once per deployment and run segment; the refusal, or None.

        A ``provider/model`` default model is decided before the quota check; every other
        deployment by the model gateway, as it reaches it (this is its
        :class:`~corral.gateway.models.ModelAuthorizer`), with the deployment's ``region`` and
        name in the policy context. Decision rows go into the next checkpoint with the step.
        """
        if self.governance is None:
            return None
        region = None if served is None else served.region
        deployment = None if served is None or served.deployment == model else served.deployment
        try:
            estimate = self._estimate(state, model, served)
        except ModelPriceUnknown:
            estimate = Decimal(0)  # no budget needs it; an unpriced call is recorded as such
        key = model if region is None and deployment is None else f"{model}|{deployment}|{region}"
        # A decision depends on the estimate: it is reused only while the estimate is the
        # same (always, for free models), so a policy on cost sees every paid call's estimate.
        if estimate:
            key = f"{key}@{estimate}"
        known = state.model_decisions.get(key)
        if known is not None:
            return None if known == "allow" else known
        provider, _, name = model.partition("/")
        request = PolicyRequest(
            principal=EntityRef("Agent", state.agent_name),
            action="model.call",
            resource=EntityRef("Model", model),
            context=PolicyContext(
                tenant=state.tenant_id,
                stage=state.stage,
                requester=state.requested_by,
                region=region,
                deployment=deployment,
                estimated_cost_usd=estimate,
            ),
        )
        entities = [
            agent_entity(state.agent_name, state.tenant_id, state.spec),
            Entity(EntityRef("Model", model), {"provider": provider, "name": name}),
        ]
        decision = await self.governance.decide(state.tenant_id, request, entities)
        state.decisions.append(
            decision_row(decision, request, tenant_id=state.tenant_id, run_id=state.run_id)
        )
        verdict = "allow"
        if decision.decision != "allow":
            verdict = (
                f"policy does not allow model {model!r} for agent {state.agent_name!r}: "
                f"{'; '.join(decision.reasons) or 'no policy permits it'} "
                f"(decision {decision.id})"
            )
        state.model_decisions[key] = verdict
        return None if verdict == "allow" else verdict

    def _decision_record(
        self, state: RunState, model: str, response: Any, started: datetime, *, withdrawn: bool
    ) -> tuple[StepRecord, Terminal | None]:
        usage = response.usage
        state.input_tokens += usage.input_tokens
        state.output_tokens += usage.output_tokens
        decision = response.decision
        tokens = (usage.input_tokens, usage.output_tokens)
        refused = None
        if isinstance(decision, FinalAnswer):
            refused = self._refusal(state, decision, withdrawn=withdrawn)
        if decision is None or refused is not None:
            error = refused or response.error or "unparseable reply"
            record = StepRecord(
                "invalid_decision",
                model,
                {"raw": response.raw, "error": error},
                started,
                error,
                *tokens,
            )
            state.messages += step_messages("invalid_decision", record.decision, [])
            return record, None
        document = decision_document(decision)
        if not isinstance(decision, list):
            record = StepRecord("final_answer", model, document, started, None, *tokens)
            return record, Terminal("SUCCEEDED", "final_answer", output=_output(decision))
        record = StepRecord("tool_calls", model, document, started, None, *tokens)
        record.tools_withdrawn = withdrawn
        return record, None

    async def _checkpoint(
        self,
        state: RunState,
        record: StepRecord | None,
        terminal: Terminal | None,
        worker_id: str,
        actor: str,
        root: Span,
    ) -> None:
        now = self.clock()
        if terminal is not None:
            root.set_attribute("corral.run.status", terminal.status)
            root.set_attribute("gen_ai.usage.input_tokens", state.input_tokens)
            root.set_attribute("gen_ai.usage.output_tokens", state.output_tokens)
            if terminal.status != "SUCCEEDED":
                root.set_attribute("error.type", terminal.reason)
                root.set_status(Status(StatusCode.ERROR, terminal.error))
            root.end()
        checkpoint = Checkpoint(
            run_id=state.run_id,
            worker_id=worker_id,
            lease_epoch=state.lease.epoch,
            tenant_id=state.tenant_id,
            agent_name=state.agent_name,
            run_values={
                "iterations": state.iterations,
                "tool_call_count": state.tool_call_count,
                "input_tokens": state.input_tokens,
                "output_tokens": state.output_tokens,
                "cost_usd": state.cost_usd,
                "updated_at": now,
                "lease_expires_at": now + self.lease,
            },
            spans=self.tracing.exporter.drain(
                state.trace_id, tenant_id=state.tenant_id, run_id=state.run_id
            ),
        )
        checkpoint.decisions, state.decisions = state.decisions, []
        checkpoint.audit, state.audit = state.audit, []  # secret.used, from the tool calls
        if state.reservation is not None and state.reservation.id is not None:
            checkpoint.reservation_ids.append(state.reservation.id)
        if record is not None and record.model_call is not None:
            checkpoint.model_calls.append(record.model_call)
        if record is not None:
            checkpoint.run_values["step_count"] = state.step_count + 1
            checkpoint.run_values["pending_decision"] = None
            self._add_step(checkpoint, state, record, actor, now)
        if terminal is not None:
            checkpoint.run_values.update(
                status=terminal.status,
                terminal_reason=terminal.reason,
                output=terminal.output,
                error=terminal.error,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            checkpoint.audit.append(
                AuditRecord(
                    actor,
                    "run.finished",
                    f"run:{state.run_id}",
                    terminal.status.lower(),
                    run_id=state.run_id,
                    trace_id=state.trace_id,
                    details={
                        "terminal_reason": terminal.reason,
                        "steps": checkpoint.run_values.get("step_count", state.step_count),
                        "tool_calls": state.tool_call_count,
                    },
                )
            )
            checkpoint.events.append(
                _event(
                    state,
                    "run.finished",
                    now,
                    status=terminal.status,
                    terminal_reason=terminal.reason,
                    output=terminal.output,
                    error=terminal.error,
                )
            )
        signals = await self.store.run_sync(
            functools.partial(write_checkpoint, checkpoint=checkpoint), checkpoint.tenant_id
        )
        if signals is None:
            raise lease_lost(state)
        # Counted once the checkpoint committed: a refused write counts nothing.
        for call in checkpoint.model_calls:
            count_model_cost(call.provider, call.model, call.cost_usd)
        if terminal is not None:
            count_run_finished(terminal.status, terminal.reason, agent=state.agent_name)
        state.signals = signals
        state.reservation = None
        if record is not None:
            state.step_count += 1
            state.step_calls = {}  # stored calls of the step just checkpointed, by call index

    def _add_step(
        self,
        checkpoint: Checkpoint,
        state: RunState,
        record: StepRecord,
        actor: str,
        now: datetime,
    ) -> None:
        checkpoint.step = {
            "id": new_id("step"),
            "tenant_id": state.tenant_id,
            "run_id": state.run_id,
            "index": state.step_count,
            "kind": record.kind,
            "model": record.model,
            "decision": record.decision,
            "error": record.error,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "started_at": record.started_at,
            "finished_at": now,
        }
        checkpoint.events.append(
            _event(
                state,
                "step",
                now,
                index=state.step_count,
                kind=record.kind,
                decision=record.decision,
                error=record.error,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
            )
        )
        for done in record.calls:
            ctx, name, arguments, result = done.ctx, done.name, done.arguments, done.result
            status = "REPEATED" if done.repeated else result.status
            checkpoint.events.append(
                _event(
                    state,
                    "tool_call",
                    now,
                    step=ctx.step_index,
                    call_index=ctx.call_index,
                    idempotency_key=ctx.idempotency_key,
                    tool=name,
                    arguments=arguments,
                    status=status,
                    error=result.error,
                    error_type=result.error_type,
                    output_bytes=result.output_bytes,
                    truncated=result.truncated,
                    skipped_by_policy=result.skipped_by_policy,
                )
            )
            if done.prerecorded:  # its row was written around its execution
                checkpoint.audit.append(_tool_audit(state, actor, done))
                continue
            checkpoint.tool_calls.append(
                {
                    "id": new_id("call"),
                    "tenant_id": state.tenant_id,
                    "run_id": state.run_id,
                    "step_index": ctx.step_index,
                    "call_index": ctx.call_index,
                    "idempotency_key": ctx.idempotency_key,
                    "tool_name": name,
                    "tool_version": result.tool_version,
                    "arguments": arguments,
                    "status": status,
                    "output": result.output,
                    "output_bytes": result.output_bytes,
                    "truncated": result.truncated,
                    "error": result.error,
                    "error_type": result.error_type,
                    "started_at": record.started_at,
                    "finished_at": now,
                }
            )
            checkpoint.audit.append(_tool_audit(state, actor, done))

    async def _load(
        self, run_id: str, worker_id: str, lease_epoch: int | None, loaded: LoadedRun | None
    ) -> RunState:
        if loaded is None:
            loaded = await self.store.run_sync(functools.partial(load_run, run_id=run_id), SYSTEM)
        run = loaded.run
        if lease_epoch is None:
            if run.lease_owner != worker_id or run.status != "RUNNING":
                raise LeaseLost(run_id, worker_id=worker_id, lease_epoch=None)
            lease_epoch = int(run.lease_epoch)
        spec = self._agent_spec(run.agent_version_id, loaded.agent_document)
        tools = {
            name: self._resolved_tool(run.tenant_id, name, version, document)
            for name, version, document in loaded.tool_documents
            if spec.tools.permits(name)
        }
        pending = StepRecord.from_pending(run.pending_decision) if run.pending_decision else None
        messages = initial_messages(spec.system_instructions, run.task, run.workspace)
        for step in loaded.steps:
            outputs = [
                (c["id"], c["name"], _output_of(loaded.calls, step.index, i))
                for i, c in enumerate(step.decision.get("tool_calls", []))
            ]
            messages += step_messages(step.kind, step.decision, outputs)
        state = RunState(
            run_id=run.id,
            tenant_id=run.tenant_id,
            trace_id=run.trace_id,
            agent_name=run.agent_name,
            spec=spec,
            models=[run.model, *spec.model.fallback],
            workspace=Path(run.workspace) if run.workspace else None,
            tools=tools,
            definitions=[
                ToolDefinition(t.name, t.contract.spec.description, t.contract.spec.input_schema)
                for t in tools.values()
            ],
            messages=messages,
            started_at=run.started_at or self.clock(),
            step_count=run.step_count,
            # The pending step's model call happened but is not checkpointed yet: count it.
            iterations=run.iterations + (1 if pending else 0),
            tool_call_count=run.tool_call_count,
            input_tokens=run.input_tokens + (pending.input_tokens if pending else 0),
            output_tokens=run.output_tokens + (pending.output_tokens if pending else 0),
            cost_usd=run.cost_usd + _pending_cost(pending),
            agent_version=run.agent_version,
            signals=loaded.signals,
            lease=Lease(run.id, worker_id, lease_epoch),
            pending=pending,
            stage=run.stage,
            requested_by=run.requested_by,
            replay_of=run.replay_of,
            approved=loaded.approved,
            step_calls={c.call_index: c for c in loaded.calls if c.step_index == run.step_count},
        )
        replay_calls(state, loaded.steps, loaded.calls)
        return state

    def _agent_spec(self, version_id: str, document: dict[str, Any]) -> AgentSpec:
        # Versions are immutable: a parsed spec can be kept for the process's lifetime.
        spec = self._specs.get(version_id)
        if spec is None:
            spec = self._specs[version_id] = Agent.model_validate(document).spec
        return spec

    def _resolved_tool(
        self, tenant_id: str, name: str, version: str, document: dict[str, Any]
    ) -> ResolvedTool:
        key = (tenant_id, name, version)
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = ResolvedTool.from_document(document)
        return tool


def _log_context(state: RunState) -> contextlib.AbstractContextManager[None]:
    """Every log line of the run's execution carries its ids (the span ids come per line)."""
    return bind_log_context(
        run_id=state.run_id,
        tenant_id=state.tenant_id,
        principal=state.requested_by or None,
    )


def _pending_cost(pending: StepRecord | None) -> Decimal:
    """The cost of the pending step's model call (made, not yet checkpointed)."""
    if pending is None or pending.model_call is None:
        return Decimal(0)
    return pending.model_call.cost_usd or Decimal(0)


def _output(answer: FinalAnswer) -> str:
    """The run's output: the answer, and the sources it cites on a last line."""
    if not answer.sources:
        return answer.text
    return f"{answer.text}\n\nSources: {', '.join(answer.sources)}"


def _output_of(calls: list[Any], step_index: int, call_index: int) -> str:
    for call in calls:
        if call.step_index == step_index and call.call_index == call_index:
            return call.output or call.error or ""
    return "(no result was recorded for this call)"


def _event(state: RunState, event_type: str, now: datetime, **data: Any) -> dict[str, Any]:
    return {
        "tenant_id": state.tenant_id,
        "run_id": state.run_id,
        "type": event_type,
        "data": data,
        "created_at": now,
    }


def _tool_audit(state: RunState, actor: str, done: Any) -> AuditRecord:
    return AuditRecord(
        actor,
        "tool.call",
        f"tool:{done.name}",
        "repeated" if done.repeated else done.result.status.lower(),
        run_id=state.run_id,
        trace_id=state.trace_id,
        policy_decision_id=done.policy_decision_id,
        details={
            "idempotency_key": done.ctx.idempotency_key,
            "tool_version": done.result.tool_version,
            "error_type": done.result.error_type,
        },
    )


def _cache_ttl(seconds: int | None) -> timedelta | None:
    """The agent's response-cache time to live (``spec.model.cache_ttl_seconds``), if any."""
    return None if seconds is None else timedelta(seconds=seconds)
