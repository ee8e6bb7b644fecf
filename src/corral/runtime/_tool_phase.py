"""The CALL_TOOLS phase: every tool call of a step, with exactly-once side effects.

A read-only call simply runs (after a crash it runs again). A side-effecting call
(``side_effect: write|destructive``) is recorded ``STARTED`` with its idempotency key
``{run_id}:{step}:{call_index}`` in its own transaction before it executes, and its outcome
right after. A recovering worker that finds a ``STARTED`` call retries it only if the tool
honours idempotency keys; otherwise the run pauses ``IN_DOUBT`` for a person
(DESIGN.md, "Exactly-once effects where it matters").
"""

from __future__ import annotations

import functools
from typing import Any

from corral.audit import AuditRecord
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import ResolvedTool, ToolGateway
from corral.observability import Tracing
from corral.runtime._context import step_messages
from corral.runtime._persist import (
    pause_run,
    read_signals,
    record_finished_call,
    record_started_call,
)
from corral.runtime._state import CallRecord, Pause, RunState, StepRecord, Terminal, signal_terminal
from corral.store import Store, new_id, utcnow

__all__ = ["LeaseLost", "ToolPhase"]


class LeaseLost(Exception):
    """Another worker owns the run now; this worker must stop touching it."""


class ToolPhase:
    """Mixin of :class:`~corral.runtime.RunExecutor`: executes the tool calls of one step."""

    store: Store
    tools: ToolGateway
    tracing: Tracing

    async def _signals_terminal(self, state: RunState, worker_id: str) -> Terminal | None:
        signals = await self.store.run_sync(
            functools.partial(
                read_signals,
                run_id=state.run_id,
                worker_id=worker_id,
                tenant_id=state.tenant_id,
                agent_name=state.agent_name,
            )
        )
        if signals is None:
            raise LeaseLost(state.run_id)
        state.signals = signals
        return signal_terminal(signals)

    async def _call_tools(
        self, state: RunState, record: StepRecord, worker_id: str, actor: str
    ) -> Terminal | Pause | None:
        limits = state.spec.limits
        offered = {} if record.tools_withdrawn else state.tools
        outputs: list[tuple[str, str, str]] = []
        # The step's calls start only if nothing was recorded since the last check.
        outcome: Terminal | Pause | None = await self._signals_terminal(state, worker_id)
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
            )
            tool = offered.get(call["name"])
            if tool is not None and tool.contract.spec.side_effect != "read":
                done = await self._side_effect(state, record, ctx, tool, call, worker_id, actor)
                if not isinstance(done, CallRecord):
                    outcome = done
                    break
            else:
                result = await self.tools.call(
                    ctx,
                    offered,
                    call["name"],
                    call["arguments"],
                    agent_tools=state.spec.tools,
                    call_id=call["id"],
                )
                done = CallRecord(ctx, call["id"], call["name"], call["arguments"], result)
            state.tool_call_count += 1
            record.calls.append(done)
            outputs.append((done.call_id, done.name, done.result.output))
        if isinstance(outcome, Pause):
            return outcome
        record.skip_calls_from(len(record.calls))
        state.messages += step_messages("tool_calls", record.decision, outputs)
        return outcome

    async def _side_effect(
        self,
        state: RunState,
        record: StepRecord,
        ctx: ToolCallContext,
        tool: ResolvedTool,
        call: dict[str, Any],
        worker_id: str,
        actor: str,
    ) -> CallRecord | Terminal | Pause:
        key = ctx.idempotency_key
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
            return CallRecord(ctx, call["id"], call["name"], call["arguments"], result, True)
        if stored is not None and stored.status == "STARTED" and not tool.contract.spec.idempotent:
            return await self._pause_in_doubt(state, tool, key, worker_id, actor)
        started_at = utcnow()
        row = {
            "id": new_id("call"),
            "tenant_id": state.tenant_id,
            "run_id": state.run_id,
            "step_index": ctx.step_index,
            "call_index": ctx.call_index,
            "idempotency_key": key,
            "tool_name": tool.name,
            "tool_version": tool.version,
            "arguments": call["arguments"],
            "status": "STARTED",
            "output": None,
            "output_bytes": 0,
            "truncated": False,
            "error": None,
            "error_type": None,
            "started_at": started_at,
            "finished_at": None,
        }
        signals = await self.store.run_sync(
            functools.partial(
                record_started_call,
                run_id=state.run_id,
                worker_id=worker_id,
                tenant_id=state.tenant_id,
                agent_name=state.agent_name,
                pending_decision=record.pending_document(),
                call=row,
            )
        )
        if signals is None:
            raise LeaseLost(state.run_id)
        stop = signal_terminal(signals)
        if stop is not None:
            return stop
        result = await self.tools.call(
            ctx,
            state.tools,
            call["name"],
            call["arguments"],
            agent_tools=state.spec.tools,
            call_id=call["id"],
        )
        values = {
            "status": result.status,
            "output": result.output,
            "output_bytes": result.output_bytes,
            "truncated": result.truncated,
            "error": result.error,
            "error_type": result.error_type,
            "finished_at": utcnow(),
        }
        await self.store.run_sync(
            functools.partial(record_finished_call, idempotency_key=key, values=values)
        )
        return CallRecord(ctx, call["id"], call["name"], call["arguments"], result, True)

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
                run_id=state.run_id,
                worker_id=worker_id,
                tenant_id=state.tenant_id,
                status="IN_DOUBT",
                reason=reason,
                resume_condition=condition,
                audit=audit,
                now=utcnow(),
            )
        )
        if not paused:
            raise LeaseLost(state.run_id)
        return Pause("IN_DOUBT", reason)
