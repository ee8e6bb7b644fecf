"""The CALL_MODEL phase: one governed model call, from the step's context to its decision.

Builds the step's context packet (fitted to the agent's input budget; the last iteration offers
no tools), decides ``model.call`` for the default model (the gateway decides the others as it
reaches them), checks the tenant's quota, reserves the call's estimate, calls the model
gateway (abandoned on a cancel, a kill switch or the end of the wall-clock budget) and turns
the reply into the step's record (:func:`~corral.runtime._decision.decision_record`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import timedelta
from decimal import Decimal

from corral.audit import AuditRecord
from corral.costs import DEFAULT_MAX_OUTPUT_TOKENS, estimate_input_tokens
from corral.errors import ModelAPIError, ModelPriceUnknown, NotFound, PolicyDenied, QuotaExceeded
from corral.gateway.models import Message, ModelRequest, ModelResponse, Served
from corral.observability import RUN_ID_ATTRIBUTE, record_child_span
from corral.policy import (
    Entity,
    EntityRef,
    PolicyContext,
    PolicyRequest,
    agent_entity,
    decision_row,
)
from corral.runtime._context import fit_context
from corral.runtime._decision import decision_record
from corral.runtime._metering import Metering
from corral.runtime._state import RunState, StepRecord, Terminal
from corral.runtime._tool_phase import ToolPhase

__all__ = ["LAST_ITERATION_NOTICE", "ModelPhase"]

LAST_ITERATION_NOTICE = (
    "This is your last step: no more tools. Give your final answer now from what you have."
)


class ModelPhase(Metering, ToolPhase):
    """Mixin of :class:`~corral.runtime.RunExecutor`: the model call of one step."""

    _refreshing: dict[str, asyncio.Lock]

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
        record, terminal = decision_record(state, model, response, started, withdrawn=not tools)
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


def _cache_ttl(seconds: int | None) -> timedelta | None:
    """The agent's response-cache time to live (``spec.model.cache_ttl_seconds``), if any."""
    return None if seconds is None else timedelta(seconds=seconds)
