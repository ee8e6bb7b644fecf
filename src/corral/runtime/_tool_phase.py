"""The CALL_TOOLS phase: every tool call of a step, with exactly-once side effects.

A read-only call simply runs (after a crash it runs again). A side-effecting call
(``side_effect: write|destructive``) is recorded ``STARTED`` with its idempotency key
``{run_id}:{step}:{call_index}`` in its own transaction before it executes, and its outcome
right after. A recovering worker that finds a ``STARTED`` call retries it only if the tool
honours idempotency keys; otherwise the run pauses ``IN_DOUBT`` for a person
(DESIGN.md, "Exactly-once effects where it matters").

Every call reads the run's cancel flag and kill switches after its policy decision,
immediately before it executes (a side-effecting call in the transaction that records it
``STARTED``) or pauses the run; every write is fenced on the worker's lease
(:mod:`corral.runtime._persist`), and a refused write raises :class:`~corral.errors.LeaseLost`.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import timedelta
from typing import Any

from corral.audit import AuditRecord
from corral.errors import LeaseLost
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import PreparedCall, ResolvedTool, ToolGateway
from corral.observability import Tracing
from corral.policy import EntityRef, PolicyContext, PolicyDecision, PolicyRequest
from corral.policy._service import (
    Governance,
    agent_entity,
    arguments_digest,
    contract_approvals,
    decision_row,
    redact,
    tool_entity,
)
from corral.runtime._context import step_messages
from corral.runtime._persist import (
    pause_run,
    read_signals,
    record_finished_call,
    record_started_call,
)
from corral.runtime._state import CallRecord, Pause, RunState, StepRecord, Terminal, signal_terminal
from corral.store import Store, new_id, utcnow

__all__ = ["LeaseLost", "ToolPhase", "lease_lost"]


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
            )
            done = await self._one_call(state, record, ctx, offered, call, worker_id, actor)
            if not isinstance(done, CallRecord):
                outcome = done
                break
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
        """Prepare -> policy decision -> signals -> execute one call (DESIGN.md, "Tool gateway").

        The cancel flag and kill switches are read after the decision, immediately before the
        execution, for every call: a read-only call here, a side-effecting one in the
        transaction that records it ``STARTED`` (invariant 8).
        """
        name, arguments = call["name"], call["arguments"]
        with self.tools.span(ctx, name, call["id"]) as record_span:
            prepared = self.tools.prepare(
                ctx, offered, name, arguments, agent_tools=state.spec.tools
            )
            if isinstance(prepared, ToolResult):
                record_span(prepared)
                return CallRecord(ctx, call["id"], name, arguments, prepared)
            decision, ctx = await self._authorize_tool(state, ctx, prepared)
            decision_id = None if decision is None else decision.id
            if decision is not None and decision.decision == "deny":
                result = _policy_denied(prepared, decision)
                record_span(result)
                return CallRecord(ctx, call["id"], name, arguments, result, False, decision_id)
            if decision is not None and decision.decision == "require_approval":
                stop = await self._signals_terminal(state, worker_id)
                if stop is not None:
                    return stop
                return await self._request_approval(
                    state, record, ctx, prepared, decision, worker_id, actor
                )
            if prepared.tool.contract.spec.side_effect != "read":
                done = await self._side_effect(
                    state, record, ctx, prepared, call, worker_id, actor, decision_id
                )
                if isinstance(done, CallRecord):
                    record_span(done.result)
                return done
            stop = await self._signals_terminal(state, worker_id)
            if stop is not None:
                return stop
            result = await self.tools.execute(ctx, prepared)
            record_span(result)
            return CallRecord(ctx, call["id"], name, arguments, result, False, decision_id)

    async def _authorize_tool(
        self, state: RunState, ctx: ToolCallContext, prepared: PreparedCall
    ) -> tuple[PolicyDecision | None, ToolCallContext]:
        """Decide ``tool.call`` for the agent; the decision is stored with the next write.

        Returns:
            The decision (``None`` without governance) and ``ctx`` with the call's path guard
            when it is allowed (the entries a tool reaches get the same decision).
        """
        if self.governance is None:
            return None, ctx
        tool, arguments = prepared.tool, prepared.arguments
        url = arguments.get("url")
        request = PolicyRequest(
            principal=EntityRef("Agent", state.agent_name),
            action="tool.call",
            resource=EntityRef("Tool", tool.name),
            context=PolicyContext(
                tenant=state.tenant_id,
                stage=state.stage,
                requester=state.requested_by,
                arguments=arguments,
                path=prepared.path,
                url=url if isinstance(url, str) else None,
                # Only an explicit entry in the agent's contract, never a wildcard, counts.
                destructive_allowed=tool.name in state.spec.tools.allowed,
            ),
        )
        granted = state.approved.get((ctx.call_index, arguments_digest(arguments)), [])
        entities = [
            agent_entity(state.agent_name, state.tenant_id, state.spec),
            tool_entity(tool, state.tenant_id),
        ]
        decision = await self.governance.decide(
            state.tenant_id, request, entities, approvals_granted=granted
        )
        decision = contract_approvals(
            decision, state.agent_name, state.spec.approvals, tool.name, granted
        )
        state.decisions.append(
            decision_row(decision, request, tenant_id=state.tenant_id, run_id=state.run_id)
        )
        if decision.decision == "allow":
            decider = await self.governance.path_decider(
                state.tenant_id, request, entities, approvals_granted=granted
            )
            ctx = dataclasses.replace(ctx, path_decider=decider)
        return decision, ctx

    async def _request_approval(
        self,
        state: RunState,
        record: StepRecord,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        decision: PolicyDecision,
        worker_id: str,
        actor: str,
    ) -> Pause:
        """Raise an approval request bound to this exact call and pause the run for it."""
        now, tool = utcnow(), prepared.tool
        approval_id = new_id("apr")
        reasons = "; ".join(decision.reasons) or "policy requires approval"
        approval = {
            "id": approval_id,
            "tenant_id": state.tenant_id,
            "kind": "tool_call",
            "status": "pending",
            "action": "tool.call",
            "subject": f"tool:{tool.name}",
            "run_id": state.run_id,
            "step_index": ctx.step_index,
            "call_index": ctx.call_index,
            "idempotency_key": ctx.idempotency_key,
            "arguments_redacted": redact(prepared.arguments),
            "arguments_digest": arguments_digest(prepared.arguments),
            "reason": reasons,
            "approver_roles": list(decision.approver_roles),
            "required_approvals": max(decision.required_approvals, 1),
            "policy_ids": list(decision.determining_policies),
            "policy_decision_id": decision.id,
            "requested_by": state.requested_by,
            "expires_at": now + self.approval_ttl,
            "created_at": now,
            "decided_at": None,
        }
        reason = (
            f"tool call {ctx.idempotency_key} of {tool.name!r} needs "
            f"{approval['required_approvals']} approval(s) from "
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
            details={"tool": tool.name, "arguments_digest": approval["arguments_digest"]},
        )
        decisions, state.decisions = state.decisions, []
        paused = await self.store.run_sync(
            functools.partial(
                pause_run,
                lease=state.lease,
                tenant_id=state.tenant_id,
                status="AWAITING_APPROVAL",
                reason=reason,
                resume_condition={"kind": "approval", "approval_id": approval_id},
                audit=audit,
                now=now,
                pending_decision=record.pending_document(),
                approval=approval,
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
        call: dict[str, Any],
        worker_id: str,
        actor: str,
        decision_id: str | None,
    ) -> CallRecord | Terminal | Pause:
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
            return CallRecord(
                ctx, call["id"], call["name"], call["arguments"], result, True, decision_id
            )
        if stored is not None and stored.status == "STARTED" and not tool.contract.spec.idempotent:
            stop = await self._signals_terminal(state, worker_id)
            if stop is not None:
                return stop
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
            return stop
        result = await self.tools.execute(ctx, prepared)
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
                record_finished_call, lease=state.lease, idempotency_key=key, values=values, now=now
            ),
            state.tenant_id,
        )
        if not recorded:  # paused past the lease: the row is the new owner's now
            raise lease_lost(state)
        return CallRecord(
            ctx, call["id"], call["name"], call["arguments"], result, True, decision_id
        )

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


def lease_lost(state: RunState) -> LeaseLost:
    """The error of a write refused because ``state.lease`` was taken over."""
    lease = state.lease
    return LeaseLost(lease.run_id, worker_id=lease.worker_id, lease_epoch=lease.epoch)


def _policy_denied(prepared: PreparedCall, decision: PolicyDecision) -> ToolResult:
    because = "; ".join(decision.reasons) or "no policy permits it"
    message = (
        f"policy denies calling {prepared.tool.name!r}: {because} (policies: "
        f"{', '.join(decision.determining_policies) or 'default deny'})"
    )
    return ToolResult(
        "DENIED",
        message,
        error=message,
        error_type="policy_denied",
        tool_version=prepared.tool.version,
    )
