"""The CHECKPOINT phase and the run's end: one fenced transaction per step.

Everything a step produced (step row, tool-call rows, run counters and lease, model-call
ledger rows, policy decisions, audit events, run events, spans) goes into one
:class:`~corral.runtime._persist.Checkpoint`; a terminal step also ends the run (its status,
``terminal_reason``, output or error, the ``run.finished`` audit and run event) and its root
span. A segment that pauses stores its spans without a checkpoint
(:meth:`Checkpointing._flush_spans`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from corral.audit import AuditRecord
from corral.observability import Tracing, count_model_cost, count_run_finished
from corral.runtime._persist import Checkpoint, insert_spans, write_checkpoint
from corral.runtime._state import RunState, StepRecord, Terminal
from corral.runtime._tool_phase import lease_lost
from corral.store import Store, new_id

__all__ = ["Checkpointing"]


class Checkpointing:
    """Mixin of :class:`~corral.runtime.RunExecutor`: the fenced writes that end a step."""

    store: Store
    tracing: Tracing
    lease: timedelta
    clock: Callable[[], datetime]

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
