"""The CALL_TOOLS phase: every tool call of a step, with exactly-once side effects.

Each call goes through the governed-call pipeline (:class:`~corral.gateway.tools.CallPipeline`)
with this module's recorder: decision rows and audit events (``secret.used`` included) wait in
the run state for the step's fenced checkpoint or the pause that ends the step.

A read-only call simply runs (after a crash it runs again). A side-effecting call
(``side_effect: write|destructive``) is recorded ``STARTED`` with its idempotency key
``{run_id}:{step}:{call_index}`` in its own transaction before it executes, and its outcome
right after. A recovering worker that finds a ``STARTED`` call retries it only if the tool
honours idempotency keys; otherwise the run pauses ``IN_DOUBT`` for a person
(DESIGN.md, "Exactly-once effects where it matters").

A call that repeats an earlier call of the run (the same tool, the same canonical arguments:
:func:`call_key`) is not executed: the model gets a feedback message as its result, the call
is stored ``REPEATED``, and the tool is not offered to the next model call (it "rests" one
step, so a model stuck on one call must use its result or do something else). At
``limits.max_repeated_calls`` repeats the run ends ``LOOP_DETECTED``. The count is rebuilt
from the stored tool-call rows when a worker resumes the run (:func:`replay_calls`).

Every call reads the run's cancel flag and kill switches after its policy decision,
immediately before it executes (a side-effecting call in the transaction that records it
``STARTED``) or pauses the run; every write is fenced on the worker's lease
(:mod:`corral.runtime._persist`), and a refused write raises :class:`~corral.errors.LeaseLost`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from corral.approvals import approval_request
from corral.audit import AuditRecord, append_events
from corral.errors import LeaseLost
from corral.gateway.tools import (
    CallOutcome,
    CallPipeline,
    CallStatus,
    GovernedCall,
    PreparedCall,
    ResolvedTool,
    ToolCallContext,
    ToolGateway,
    ToolResult,
    returned_paths,
)
from corral.observability import Tracing
from corral.policy import Authorization, DecisionRow, Governance, agent_entity, arguments_digest
from corral.runtime._context import step_messages
from corral.runtime._persist import (
    pause_run,
    read_signals,
    record_finished_call,
    record_started_call,
)
from corral.runtime._state import CallRecord, Pause, RunState, StepRecord, Terminal, signal_terminal
from corral.store import Store, new_id, utcnow

__all__ = [
    "LeaseLost",
    "ToolPhase",
    "call_key",
    "lease_lost",
    "repeat_feedback",
    "replay_calls",
]


class ToolPhase:
    """Mixin of :class:`~corral.runtime.RunExecutor`: executes the tool calls of one step."""

    store: Store
    tools: ToolGateway
    tracing: Tracing
    governance: Governance | None
    approval_ttl: timedelta

    async def _signals_terminal(self, state: RunState, worker_id: str) -> Terminal | None:
        """Read the run's cancel flag and kill switches; the terminal they call for, if any.

        Raises:
            LeaseLost: the run was claimed again since this worker's claim.
        """
        signals = await self.store.run_sync(
            functools.partial(
                read_signals,
                lease=state.lease,
                tenant_id=state.tenant_id,
                agent_name=state.agent_name,
            ),
            state.tenant_id,
        )
        if signals is None:
            raise lease_lost(state)
        state.signals = signals
        return signal_terminal(signals)

    async def _call_tools(
        self, state: RunState, record: StepRecord, worker_id: str, actor: str
    ) -> Terminal | Pause | None:
        limits = state.spec.limits
        offered = {} if record.tools_withdrawn else state.tools
        outputs: list[tuple[str, str, str]] = []
        # No read of the signals here: every call reads them after its policy decision,
        # immediately before it executes or pauses the run (see _one_call).
        outcome: Terminal | Pause | None = None
        for index, call in enumerate(record.decision["tool_calls"]):
            if outcome is None and state.abort.is_set():
                outcome = await self._signals_terminal(state, worker_id)
            if outcome is None and state.tool_call_count >= limits.max_tool_calls:
                outcome = Terminal(
                    "BUDGET_EXCEEDED",
                    "max_tool_calls",
                    error=f"the run used all {limits.max_tool_calls} tool calls",
                )
            if outcome is not None:
                break
            ctx = ToolCallContext(
                state.tenant_id,
                state.run_id,
                state.step_count,
                index,
                state.workspace,
                frozenset(offered),
                principal=f"agent:{state.agent_name}",
                principal_entity=agent_entity(state.agent_name, state.tenant_id, state.spec),
                stage=state.stage,
                requester=state.requested_by,
                replay_of=state.replay_of,
            )
            key = call_key(call["name"], call["arguments"])
            first = state.seen_calls.get(key)
            if first is not None:
                state.repeated_calls += 1
                if state.repeated_calls >= limits.max_repeated_calls:
                    outcome = _loop_detected(call["name"], first, limits.max_repeated_calls)
                    break
                done: CallRecord | Terminal | Pause = _repeated(ctx, call, first)
                state.resting.add(call["name"])
            else:
                done = await self._one_call(state, record, ctx, offered, call, worker_id, actor)
            if not isinstance(done, CallRecord):
                outcome = done
                break
            if not done.repeated:
                state.saw_call(key, ctx.step_index, _paths(done))
            state.tool_call_count += 1
            record.calls.append(done)
            outputs.append((done.call_id, done.name, done.result.output))
        if isinstance(outcome, Pause):
            return outcome
        record.skip_calls_from(len(record.calls))
        state.messages += step_messages("tool_calls", record.decision, outputs)
        return outcome

    async def _one_call(
        self,
        state: RunState,
        record: StepRecord,
        ctx: ToolCallContext,
        offered: dict[str, ResolvedTool],
        call: dict[str, Any],
        worker_id: str,
        actor: str,
    ) -> CallRecord | Terminal | Pause:
        """One call through the governed pipeline, its rows batched into the step's checkpoint.

        The cancel flag and kill switches are read after the decision, immediately before the
        execution, for every call: a read-only call here, a side-effecting one in the
        transaction that records it ``STARTED`` (invariant 8).
        """
        name, arguments = call["name"], call["arguments"]
        governed = GovernedCall(
            ctx,
            call["id"],
            name,
            arguments,
            offered,
            ctx.principal_entity or agent_entity(state.agent_name, state.tenant_id, state.spec),
            state.spec.tools,
            spec=state.spec,
            granted=tuple(state.approved.get((ctx.call_index, arguments_digest(arguments)), [])),
        )
        pipeline = CallPipeline(self.tools, self.governance)
        outcome = await pipeline.run(governed, _RunRecorder(self, state, record, worker_id, actor))
        if outcome.stop is not None:
            stop: Terminal | Pause = outcome.stop
            return stop
        assert outcome.result is not None
        return CallRecord(
            outcome.ctx,
            call["id"],
            name,
            arguments,
            outcome.result,
            outcome.prerecorded,
            outcome.decision_id,
        )

    async def _request_approval(
        self,
        state: RunState,
        record: StepRecord,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        decision: Any,
        worker_id: str,
        actor: str,
    ) -> Pause:
        """Raise an approval request bound to this exact call and pause the run for it."""
        now, tool = utcnow(), prepared.tool
        approval = approval_request(
            decision,
            tenant_id=state.tenant_id,
            kind="tool_call",
            action="tool.call",
            subject=f"tool:{tool.name}",
            arguments=prepared.arguments,
            requested_by=state.requested_by,
            now=now,
            expires_at=now + self.approval_ttl,
            run_id=state.run_id,
            step_index=ctx.step_index,
            call_index=ctx.call_index,
            idempotency_key=ctx.idempotency_key,
        )
        approval_id, reasons = approval.id, approval.reason
        reason = (
            f"tool call {ctx.idempotency_key} of {tool.name!r} needs "
            f"{approval.required_approvals} approval(s) from "
            f"{' or '.join(decision.approver_roles) or 'an approver'}: {reasons}. "
            f"Approve with `corral approve {approval_id}` or reject with "
            f"`corral reject {approval_id} --reason ...`."
        )
        audit = AuditRecord(
            actor,
            "approval.requested",
            f"approval:{approval_id}",
            "pending",
            run_id=state.run_id,
            trace_id=state.trace_id,
            policy_decision_id=decision.id,
            details={"tool": tool.name, "arguments_digest": approval.arguments_digest},
        )
        decisions, state.decisions = state.decisions, []
        earlier, state.audit = state.audit, []
        paused = await self.store.run_sync(
            functools.partial(
                _pause_with_audit,
                earlier=earlier,
                lease=state.lease,
                tenant_id=state.tenant_id,
                status="AWAITING_APPROVAL",
                reason=reason,
                resume_condition={"kind": "approval", "approval_id": approval_id},
                audit=audit,
                now=now,
                pending_decision=record.pending_document(),
                approval=approval.as_row(),
                decisions=decisions,
            ),
            state.tenant_id,
        )
        if not paused:
            raise lease_lost(state)
        return Pause("AWAITING_APPROVAL", reason)

    async def _side_effect(
        self,
        state: RunState,
        record: StepRecord,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        worker_id: str,
        actor: str,
        authorization: Authorization | None,
    ) -> CallOutcome | None:
        """The idempotency record of a side-effecting call: ``STARTED`` before it runs.

        Returns:
            ``None`` to execute it (its row is ``STARTED``); or the outcome ending it: the
            result stored by an earlier attempt, a pause ``IN_DOUBT``, a cancel or kill.
        """
        key, tool = ctx.idempotency_key, prepared.tool
        stored = state.step_calls.get(ctx.call_index)
        if stored is not None and stored.status in ("COMPLETED", "FAILED", "DENIED"):
            result = ToolResult(
                stored.status,
                stored.output or stored.error or "",
                output_bytes=stored.output_bytes,
                truncated=stored.truncated,
                error=stored.error,
                error_type=stored.error_type,
                tool_version=stored.tool_version,
            )
            return CallOutcome(result.status, result, ctx, authorization, prerecorded=True)
        if stored is not None and stored.status == "STARTED" and not tool.contract.spec.idempotent:
            stop: Terminal | Pause | None = await self._signals_terminal(state, worker_id)
            if stop is None:
                stop = await self._pause_in_doubt(state, tool, key, worker_id, actor)
            return CallOutcome("STOPPED", None, ctx, authorization, stop=stop)
        row = {
            "id": new_id("call"),
            "tenant_id": state.tenant_id,
            "run_id": state.run_id,
            "step_index": ctx.step_index,
            "call_index": ctx.call_index,
            "idempotency_key": key,
            "tool_name": tool.name,
            "tool_version": tool.version,
            "arguments": prepared.arguments,
            "status": "STARTED",
            "output": None,
            "output_bytes": 0,
            "truncated": False,
            "error": None,
            "error_type": None,
            "started_at": utcnow(),
            "finished_at": None,
        }
        signals = await self.store.run_sync(
            functools.partial(
                record_started_call,
                lease=state.lease,
                tenant_id=state.tenant_id,
                agent_name=state.agent_name,
                pending_decision=record.pending_document(),
                call=row,
            ),
            state.tenant_id,
        )
        if signals is None:
            raise lease_lost(state)
        stop = signal_terminal(signals)
        if stop is not None:
            return CallOutcome("STOPPED", None, ctx, authorization, stop=stop)
        return None

    async def _finish_side_effect(
        self, state: RunState, ctx: ToolCallContext, result: ToolResult
    ) -> None:
        now = utcnow()
        values = {
            "status": result.status,
            "output": result.output,
            "output_bytes": result.output_bytes,
            "truncated": result.truncated,
            "error": result.error,
            "error_type": result.error_type,
            "finished_at": now,
        }
        recorded = await self.store.run_sync(
            functools.partial(
                record_finished_call,
                lease=state.lease,
                idempotency_key=ctx.idempotency_key,
                values=values,
                now=now,
            ),
            state.tenant_id,
        )
        if not recorded:  # paused past the lease: the row is the new owner's now
            raise lease_lost(state)

    async def _pause_in_doubt(
        self, state: RunState, tool: ResolvedTool, key: str, worker_id: str, actor: str
    ) -> Pause:
        reason = (
            f"tool call {key} of {tool.name!r} (side_effect {tool.contract.spec.side_effect}) "
            "was started by a worker that died; it may or may not have taken effect and the tool "
            "does not honour idempotency keys. Resolve with "
            f"`corral runs resolve {state.run_id} --as done|retry|failed`."
        )
        audit = AuditRecord(
            actor,
            "run.paused",
            f"run:{state.run_id}",
            "in_doubt",
            run_id=state.run_id,
            trace_id=state.trace_id,
            details={"idempotency_key": key, "tool": tool.name},
        )
        condition = {"kind": "in_doubt", "idempotency_key": key, "tool": tool.name}
        paused = await self.store.run_sync(
            functools.partial(
                pause_run,
                lease=state.lease,
                tenant_id=state.tenant_id,
                status="IN_DOUBT",
                reason=reason,
                resume_condition=condition,
                audit=audit,
                now=utcnow(),
            ),
            state.tenant_id,
        )
        if not paused:
            raise lease_lost(state)
        return Pause("IN_DOUBT", reason)


def call_key(name: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """What makes two calls the same: the tool and the digest of its arguments' canonical JSON.

    Paths are compared as given, not resolved: a respelled path (``./a.py``) is another call,
    which goes through the tool gateway and its policy decision like any other (a probe of
    path canonicalisation must reach the policy, not be answered from the loop's memory).
    """
    return name, arguments_digest(arguments)


def repeat_feedback(name: str, first_step: int) -> str:
    """The result a repeated call gets instead of a fresh execution (``first_step``: its index)."""
    return (
        f"You already called {name} with these arguments at step {first_step}; its result "
        "is above. Use it, call a different tool or different arguments, or give your final "
        "answer. Repeating the same call again can end the run."
    )


def replay_calls(state: RunState, steps: Iterable[Any], calls: list[Any]) -> None:
    """Rebuild the run's call history (loop detection, citable paths) from stored rows.

    Args:
        state: The run being resumed; its ``seen_calls``, ``repeated_calls``, ``resting``
            and ``sources`` are filled.
        steps: The run's checkpointed steps, in order.
        calls: The run's stored tool-call rows.
    """
    rows = {(c.step_index, c.call_index): c for c in calls}
    for step in steps:
        state.resting = set()  # only the last step's repeats rest their tools
        for index, call in enumerate(step.decision.get("tool_calls", [])):
            row = rows.get((step.index, index))
            if row is not None and row.status == "REPEATED":
                state.repeated_calls += 1
                state.resting.add(call["name"])
                continue
            paths = None
            if row is not None and row.status == "COMPLETED":
                paths = returned_paths(
                    call["name"], call["arguments"], row.output or "", truncated=row.truncated
                )
            state.saw_call(call_key(call["name"], call["arguments"]), step.index, paths)


def _paths(done: CallRecord) -> list[str]:
    if done.result.status != "COMPLETED":
        return []
    result = done.result
    return returned_paths(done.name, done.arguments, result.output, truncated=result.truncated)


def _repeated(ctx: ToolCallContext, call: dict[str, Any], first_step: int) -> CallRecord:
    """The record of a call not executed because it repeats the call of ``first_step``."""
    feedback = repeat_feedback(call["name"], first_step)
    result = ToolResult("FAILED", feedback, error_type="repeated_call")
    return CallRecord(ctx, call["id"], call["name"], call["arguments"], result, repeated=True)


def _loop_detected(name: str, first_step: int, limit: int) -> Terminal:
    return Terminal(
        "LOOP_DETECTED",
        f"max_repeated_calls:{limit}:{name}"[:64],
        error=(
            f"the run repeated tool calls {limit} times (limits.max_repeated_calls), the last "
            f"one {name!r} with the arguments of its call at step {first_step}"
        ),
    )


def lease_lost(state: RunState) -> LeaseLost:
    """The error of a write refused because ``state.lease`` was taken over."""
    lease = state.lease
    return LeaseLost(lease.run_id, worker_id=lease.worker_id, lease_epoch=lease.epoch)


def _pause_with_audit(connection: Connection, *, earlier: list[AuditRecord], **pause: Any) -> bool:
    """:func:`pause_run`, and the step's earlier audit events (``secret.used``) before it."""
    if earlier:
        append_events(connection, pause["tenant_id"], earlier)
    return pause_run(connection, **pause)


class _RunRecorder:
    """A managed run's :class:`~corral.gateway.tools.CallRecorder`.

    Decision rows and audit events wait in the run state for the step's fenced checkpoint (or
    the pause that ends the step); a side-effecting call is recorded ``STARTED`` before it runs
    and its outcome right after (exactly once, DESIGN.md).
    """

    def __init__(
        self, phase: ToolPhase, state: RunState, record: StepRecord, worker_id: str, actor: str
    ) -> None:
        self.phase, self.state, self.record = phase, state, record
        self.worker_id, self.actor = worker_id, actor

    def decided(self, row: DecisionRow) -> None:
        self.state.decisions.append(row.as_row())

    def secret_used(self, row: DecisionRow, audit: AuditRecord) -> None:
        self.state.decisions.append(row.as_row())
        self.state.audit.append(audit)

    async def approval_required(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization
    ) -> CallOutcome:
        state, ctx = self.state, call.ctx
        stop: Terminal | Pause | None = await self.phase._signals_terminal(state, self.worker_id)
        status: CallStatus = "STOPPED" if stop is not None else "APPROVAL_REQUIRED"
        if stop is None:
            stop = await self.phase._request_approval(
                state,
                self.record,
                ctx,
                prepared,
                authorization.decision,
                self.worker_id,
                self.actor,
            )
        return CallOutcome(status, None, ctx, authorization, stop=stop)

    async def before_execute(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization | None
    ) -> CallOutcome | None:
        if prepared.tool.contract.spec.side_effect != "read":
            return await self.phase._side_effect(
                self.state,
                self.record,
                call.ctx,
                prepared,
                self.worker_id,
                self.actor,
                authorization,
            )
        stop = await self.phase._signals_terminal(self.state, self.worker_id)
        if stop is not None:
            return CallOutcome("STOPPED", None, call.ctx, authorization, stop=stop)
        return None

    async def executed(
        self, call: GovernedCall, prepared: PreparedCall, result: ToolResult
    ) -> bool:
        if prepared.tool.contract.spec.side_effect == "read":
            return False
        await self.phase._finish_side_effect(self.state, call.ctx, result)
        return True
