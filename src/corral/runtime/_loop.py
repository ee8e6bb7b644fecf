"""The standard loop as an explicit state machine, checkpointed one step at a time.

Phases of one step (DESIGN.md, "The main job")::

    CHECK (cancel, budgets) -> CALL_MODEL -> PARSE -> CALL_TOOLS -> CHECKPOINT -> CHECK ...
    any phase -> FINISH (final answer, budget, cancel, model error): the last checkpoint

Everything one step produced (step row, tool-call rows, run counters and lease, audit events,
spans) commits in one transaction. A worker that dies loses at most the step in progress; the
next worker rebuilds the context from the checkpoints and continues from the next step.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from corral.audit import AuditRecord
from corral.contracts import Agent, AgentSpec
from corral.errors import ModelAPIError
from corral.gateway.models import Message, ModelRequest, ToolDefinition
from corral.gateway.models._gateway import ModelGateway
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import ResolvedTool, ToolGateway
from corral.observability import Tracing
from corral.runtime._context import (
    decision_document,
    fit_context,
    initial_messages,
    step_messages,
)
from corral.runtime._persist import Checkpoint, load_run, write_checkpoint
from corral.store import Store, new_id, utcnow

__all__ = ["LAST_ITERATION_NOTICE", "LeaseLost", "Phase", "RunExecutor"]


LAST_ITERATION_NOTICE = (
    "This is your last step: no more tools. Give your final answer now from what you have."
)


class Phase(enum.Enum):
    """Where the loop is within a step."""

    CHECK = "check"
    CALL_MODEL = "call_model"
    CALL_TOOLS = "call_tools"
    CHECKPOINT = "checkpoint"


class LeaseLost(Exception):
    """Another worker owns the run now; this worker must stop touching it."""


@dataclass
class _Terminal:
    status: str
    reason: str
    output: str | None = None
    error: str | None = None


@dataclass
class _StepRecord:
    kind: str
    model: str
    decision: dict[str, Any]
    started_at: datetime
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: list[tuple[ToolCallContext, str, str, dict[str, Any], ToolResult]] = field(
        default_factory=list
    )
    tools_withdrawn: bool = False
    """The model was offered no tools (last iteration): any call it makes is refused."""


@dataclass
class _RunState:
    """Everything the loop needs in memory; all of it can be rebuilt from the store."""

    run_id: str
    tenant_id: str
    trace_id: str
    agent_name: str
    spec: AgentSpec
    models: list[str]
    workspace: Path | None
    tools: dict[str, ResolvedTool]
    definitions: list[ToolDefinition]
    messages: list[Message]
    started_at: datetime
    step_count: int
    iterations: int
    tool_call_count: int
    input_tokens: int
    output_tokens: int
    cancel_requested: bool


class RunExecutor:
    """Executes leased runs with the standard loop.

    Args:
        store: The store holding runs, steps and the audit chain.
        models: The model gateway.
        tools: The tool gateway.
        tracing: Where spans go (drained into each step's transaction).
        lease_seconds: Lease length renewed at every checkpoint.
    """

    def __init__(
        self,
        store: Store,
        models: ModelGateway,
        tools: ToolGateway,
        tracing: Tracing,
        *,
        lease_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.models = models
        self.tools = tools
        self.tracing = tracing
        self.lease = timedelta(seconds=lease_seconds)
        self._specs: dict[str, AgentSpec] = {}
        self._tools: dict[tuple[str, str, str], ResolvedTool] = {}

    async def execute(self, run_id: str, worker_id: str) -> str:
        """Drive a run this worker has leased until it is terminal; returns the final status.

        Raises:
            LeaseLost: the lease passed to another worker (this worker's work is discarded).
        """
        state = await self._load(run_id)
        actor = f"worker:{worker_id}"
        tracer = self.tracing.tracer
        with self.tracing.trace(state.trace_id):
            root = tracer.start_span(f"invoke_agent {state.agent_name}")
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", state.agent_name)
        root.set_attribute("corral.run.id", run_id)
        try:
            with trace.use_span(root, end_on_exit=False):
                return await self._loop(state, worker_id, actor, root)
        except BaseException:
            root.end()
            self.tracing.exporter.discard(state.trace_id)
            raise

    async def _loop(self, state: _RunState, worker_id: str, actor: str, root: Span) -> str:
        phase, record, terminal = Phase.CHECK, None, None
        while True:
            if phase is Phase.CHECK:
                terminal = self._check(state)
                phase = Phase.CHECKPOINT if terminal else Phase.CALL_MODEL
            elif phase is Phase.CALL_MODEL:
                record, terminal = await self._call_model(state)
                wants_tools = record.kind == "tool_calls" and terminal is None
                phase = Phase.CALL_TOOLS if wants_tools else Phase.CHECKPOINT
            elif phase is Phase.CALL_TOOLS:
                assert record is not None
                terminal = await self._call_tools(state, record)
                phase = Phase.CHECKPOINT
            elif phase is Phase.CHECKPOINT:
                await self._checkpoint(state, record, terminal, worker_id, actor, root)
                if terminal is not None:
                    return terminal.status
                phase, record = Phase.CHECK, None

    def _check(self, state: _RunState) -> _Terminal | None:
        limits = state.spec.limits
        if state.cancel_requested:
            return _Terminal("CANCELLED", "cancelled")
        if utcnow() - state.started_at >= timedelta(seconds=limits.max_wall_clock_seconds):
            return _Terminal(
                "TIMED_OUT",
                "max_wall_clock_seconds",
                error=f"the run exceeded {limits.max_wall_clock_seconds} s",
            )
        if state.iterations >= limits.max_iterations:
            return _Terminal(
                "BUDGET_EXCEEDED",
                "max_iterations",
                error=f"the run used all {limits.max_iterations} iterations",
            )
        return None

    async def _call_model(self, state: _RunState) -> tuple[_StepRecord, _Terminal | None]:
        spec = state.spec
        messages = fit_context(state.messages, spec.limits.max_input_tokens)
        tools = state.definitions
        if state.iterations == spec.limits.max_iterations - 1 and tools:
            # The last iteration offers no tools: the model must answer with what it has,
            # rather than the run ending BUDGET_EXCEEDED mid-investigation.
            messages = [*messages, Message("user", LAST_ITERATION_NOTICE)]
            tools = []
        withdrawn = not tools
        request = ModelRequest(
            model="",
            messages=list(messages),  # a copy: state.messages grows after the call
            tools=tools,
            temperature=spec.model.temperature,
            max_output_tokens=spec.model.max_output_tokens,
        )
        started = utcnow()
        remaining = (
            spec.limits.max_wall_clock_seconds - (started - state.started_at).total_seconds()
        )
        state.iterations += 1
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                model, response = await self.models.complete(
                    state.models, request, run_id=state.run_id
                )
        except TimeoutError:
            record = _StepRecord(
                "model_error",
                state.models[0],
                {"error": "timed out"},
                started,
                error="the model call did not finish within the wall-clock budget",
            )
            return record, _Terminal("TIMED_OUT", "max_wall_clock_seconds", error=record.error)
        except ModelAPIError as exc:
            record = _StepRecord(
                "model_error", state.models[0], {"error": exc.message}, started, error=exc.message
            )
            return record, _Terminal("FAILED", "model_error", error=exc.message)
        usage = response.usage
        state.input_tokens += usage.input_tokens
        state.output_tokens += usage.output_tokens
        decision = response.decision
        if decision is None:
            error = response.error or "unparseable reply"
            record = _StepRecord(
                "invalid_decision",
                model,
                {"raw": response.raw, "error": error},
                started,
                error,
                usage.input_tokens,
                usage.output_tokens,
            )
            state.messages += step_messages("invalid_decision", record.decision, [])
            return record, None
        document = decision_document(decision)
        if not isinstance(decision, list):
            record = _StepRecord(
                "final_answer",
                model,
                document,
                started,
                None,
                usage.input_tokens,
                usage.output_tokens,
            )
            return record, _Terminal("SUCCEEDED", "final_answer", output=decision.text)
        record = _StepRecord(
            "tool_calls", model, document, started, None, usage.input_tokens, usage.output_tokens
        )
        record.tools_withdrawn = withdrawn
        return record, None

    async def _call_tools(self, state: _RunState, record: _StepRecord) -> _Terminal | None:
        limits = state.spec.limits
        outputs: list[tuple[str, str, str]] = []
        terminal = None
        for index, call in enumerate(record.decision["tool_calls"]):
            if state.tool_call_count >= limits.max_tool_calls:
                terminal = _Terminal(
                    "BUDGET_EXCEEDED",
                    "max_tool_calls",
                    error=f"the run used all {limits.max_tool_calls} tool calls",
                )
                record.decision["tool_calls"] = record.decision["tool_calls"][:index]
                break
            ctx = ToolCallContext(
                state.tenant_id,
                state.run_id,
                state.step_count,
                index,
                state.workspace,
                frozenset(state.tools),
            )
            result = await self.tools.call(
                ctx,
                {} if record.tools_withdrawn else state.tools,
                call["name"],
                call["arguments"],
                agent_tools=state.spec.tools,
                call_id=call["id"],
            )
            state.tool_call_count += 1
            record.calls.append((ctx, call["id"], call["name"], call["arguments"], result))
            outputs.append((call["id"], call["name"], result.output))
        state.messages += step_messages("tool_calls", record.decision, outputs)
        return terminal

    async def _checkpoint(
        self,
        state: _RunState,
        record: _StepRecord | None,
        terminal: _Terminal | None,
        worker_id: str,
        actor: str,
        root: Span,
    ) -> None:
        now = utcnow()
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
            tenant_id=state.tenant_id,
            run_values={
                "iterations": state.iterations,
                "tool_call_count": state.tool_call_count,
                "input_tokens": state.input_tokens,
                "output_tokens": state.output_tokens,
                "updated_at": now,
                "lease_expires_at": now + self.lease,
            },
            spans=self.tracing.exporter.drain(
                state.trace_id, tenant_id=state.tenant_id, run_id=state.run_id
            ),
        )
        if record is not None:
            checkpoint.run_values["step_count"] = state.step_count + 1
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
        cancel_requested = await self.store.run_sync(
            lambda connection: write_checkpoint(connection, checkpoint)
        )
        if cancel_requested is None:
            raise LeaseLost(state.run_id)
        state.cancel_requested = cancel_requested
        if record is not None:
            state.step_count += 1

    def _add_step(
        self,
        checkpoint: Checkpoint,
        state: _RunState,
        record: _StepRecord,
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
        for ctx, _call_id, name, arguments, result in record.calls:
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
                    "status": result.status,
                    "output": result.output,
                    "output_bytes": result.output_bytes,
                    "truncated": result.truncated,
                    "error": result.error,
                    "error_type": result.error_type,
                    "started_at": record.started_at,
                    "finished_at": now,
                }
            )
            checkpoint.audit.append(
                AuditRecord(
                    actor,
                    "tool.call",
                    f"tool:{name}",
                    result.status.lower(),
                    run_id=state.run_id,
                    trace_id=state.trace_id,
                    details={
                        "idempotency_key": ctx.idempotency_key,
                        "tool_version": result.tool_version,
                        "error_type": result.error_type,
                    },
                )
            )

    async def _load(self, run_id: str) -> _RunState:
        loaded = await self.store.run_sync(lambda connection: load_run(connection, run_id))
        run = loaded.run
        spec = self._agent_spec(run.agent_version_id, loaded.agent_document)
        tools = {
            name: self._resolved_tool(run.tenant_id, name, version, document)
            for name, version, document in loaded.tool_documents
            if spec.tools.permits(name)
        }
        messages = initial_messages(spec.instructions, run.task, run.workspace)
        for step in loaded.steps:
            outputs = [
                (c["id"], c["name"], _output_of(loaded.calls, step.index, i))
                for i, c in enumerate(step.decision.get("tool_calls", []))
            ]
            messages += step_messages(step.kind, step.decision, outputs)
        return _RunState(
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
            started_at=run.started_at or utcnow(),
            step_count=run.step_count,
            iterations=run.iterations,
            tool_call_count=run.tool_call_count,
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            cancel_requested=run.cancel_requested,
        )

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


def _output_of(calls: list[Any], step_index: int, call_index: int) -> str:
    for call in calls:
        if call.step_index == step_index and call.call_index == call_index:
            return call.output or call.error or ""
    return "(no result was recorded for this call)"
