"""A run's state rebuilt from its checkpoints when a worker starts (or resumes) driving it.

The context is rebuilt from the stored steps and tool-call rows; a step whose model call was
made but not checkpointed (``pending_decision``) is counted, and its tool calls go on from
that recorded decision rather than asking the model again; the repeated-call counts are
replayed (:func:`~corral.runtime._tool_phase.replay_calls`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from corral.gateway.models import ToolDefinition
from corral.gateway.tools import ResolvedTool
from corral.runtime._context import initial_messages, step_messages
from corral.runtime._persist import Lease, LoadedRun, load_run
from corral.runtime._state import RunState, StepRecord
from corral.runtime._tool_phase import LeaseLost, replay_calls
from corral.store import SYSTEM, Store

__all__ = ["Resume"]


class Resume:
    """Mixin of :class:`~corral.runtime.RunExecutor`: loads the run it is to drive."""

    store: Store
    clock: Callable[[], datetime]
    _tools: dict[tuple[str, str, str], ResolvedTool]

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
        spec = loaded.spec
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

    def _resolved_tool(
        self, tenant_id: str, name: str, version: str, document: dict[str, Any]
    ) -> ResolvedTool:
        key = (tenant_id, name, version)
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = ResolvedTool.from_document(document)
        return tool


def _pending_cost(pending: StepRecord | None) -> Decimal:
    """The cost of the pending step's model call (made, not yet checkpointed)."""
    if pending is None or pending.model_call is None:
        return Decimal(0)
    return pending.model_call.cost_usd or Decimal(0)


def _output_of(calls: list[Any], step_index: int, call_index: int) -> str:
    for call in calls:
        if call.step_index == step_index and call.call_index == call_index:
            return call.output or call.error or ""
    return "(no result was recorded for this call)"
