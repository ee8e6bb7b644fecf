"""In-memory state of a run being executed, and the records a step produces."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from corral.audit import AuditRecord
from corral.contracts import AgentSpec
from corral.costs import ModelCall, Reservation
from corral.gateway.models import Message, ToolDefinition
from corral.gateway.tools import ResolvedTool, ToolCallContext, ToolResult
from corral.runtime._persist import KillSwitch, Lease, Signals

__all__ = ["CallRecord", "Pause", "RunState", "StepRecord", "Terminal", "signal_terminal"]


@dataclass(frozen=True)
class Terminal:
    """How a run ends: status, ``terminal_reason`` and output or error."""

    status: str
    reason: str
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Pause:
    """The run stopped to wait for a person (already written by ``pause_run``)."""

    status: str
    reason: str


@dataclass(frozen=True)
class CallRecord:
    """One tool call of the step; ``prerecorded`` calls already have their final row."""

    ctx: ToolCallContext
    call_id: str
    name: str
    arguments: dict[str, Any]
    result: ToolResult
    prerecorded: bool = False
    policy_decision_id: str | None = None
    repeated: bool = False
    """Not executed: a repeat of an earlier call of the run (stored ``REPEATED``)."""


@dataclass
class StepRecord:
    """What one step produced before its checkpoint."""

    kind: str
    model: str
    decision: dict[str, Any]
    started_at: datetime
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    tools_withdrawn: bool = False
    """The model was offered no tools (last iteration): any call it makes is refused."""
    model_call: ModelCall | None = None
    """The step's model call for the cost ledger (written with the step's checkpoint)."""

    def pending_document(self) -> dict[str, Any]:
        """What is stored as ``runs.pending_decision`` once a side effect starts."""
        document = {
            "model": self.model,
            "decision": self.decision,
            "started_at": self.started_at.isoformat(),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tools_withdrawn": self.tools_withdrawn,
        }
        if self.model_call is not None:
            document["model_call"] = self.model_call.document()
        return document

    @classmethod
    def from_pending(cls, document: dict[str, Any]) -> StepRecord:
        """Rebuild the step in progress from ``runs.pending_decision``."""
        return cls(
            kind="tool_calls",
            model=document["model"],
            decision=document["decision"],
            started_at=datetime.fromisoformat(document["started_at"]),
            input_tokens=document["input_tokens"],
            output_tokens=document["output_tokens"],
            tools_withdrawn=document["tools_withdrawn"],
            model_call=(
                ModelCall.from_document(document["model_call"])
                if document.get("model_call")
                else None
            ),
        )

    def skip_calls_from(self, index: int) -> None:
        """Calls from ``index`` on were not executed: keep them apart in the decision."""
        calls = self.decision["tool_calls"]
        if index < len(calls):
            self.decision["skipped_tool_calls"] = calls[index:]
            self.decision["tool_calls"] = calls[:index]


@dataclass
class RunState:
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
    signals: Signals
    lease: Lease
    """This worker's lease on the run: every write for the run is fenced on it."""
    pending: StepRecord | None = None
    """The step in progress when the run was last interrupted after a side effect started."""
    step_calls: dict[int, Any] = field(default_factory=dict)
    """Stored tool-call rows of the step in progress, by call index."""
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the worker when it sees a cancel or kill switch while the run is busy."""
    stage: str = "dev"
    requested_by: str = ""
    approved: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    """Approved policy ids for calls of the step in progress, by (call index, args digest)."""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """Policy decision rows made since the last checkpoint (stored with it)."""
    audit: list[AuditRecord] = field(default_factory=list)
    """Audit events made since the last checkpoint outside the step's own (``secret.used``),
    stored with it."""
    model_decisions: dict[str, str] = field(default_factory=dict)
    """``model.call`` outcome per model for this run segment: ``allow`` or the denial text."""
    agent_version: str = ""
    """The agent version the run executes (``runs.agent_version``)."""
    cost_usd: Decimal = Decimal(0)
    """US dollars the run's model calls cost so far (``runs.cost_usd``)."""
    reservation: Reservation | None = None
    """The budget reservation of the model call in progress (released by the checkpoint)."""
    estimate_input_tokens: int = 0
    """The current model call's estimated prompt tokens (for cost estimates)."""
    estimate_output_tokens: int = 0
    """The current model call's output token cap (for cost estimates)."""
    seen_calls: dict[tuple[str, str], int] = field(default_factory=dict)
    """Step index of the first call of each (tool, canonical arguments digest) of the run."""
    repeated_calls: int = 0
    """Calls of the run that repeated an earlier one (``limits.max_repeated_calls``)."""
    resting: set[str] = field(default_factory=set)
    """Tools whose call the last step repeated: not offered to the next model call, so a
    model stuck on one call (a small model re-listing ``.``) must do something else."""
    replay_of: str | None = None
    """The recorded run this run replays (``runs.replay_of``), or ``None``."""
    sources: list[str] = field(default_factory=list)
    """Workspace paths the run's tool calls returned, first seen first (what a final answer
    may cite under ``answer.cite_sources``)."""

    def saw_call(
        self, key: tuple[str, str], step_index: int, paths: list[str] | None = None
    ) -> None:
        """Remember a call that was made (and the paths it returned, if it completed)."""
        self.seen_calls.setdefault(key, step_index)
        known = set(self.sources)
        self.sources.extend(p for p in paths or [] if p not in known)


def signal_terminal(signals: Signals) -> Terminal | None:
    """``KILLED`` for an engaged kill switch, ``CANCELLED`` for a cancel request, else ``None``."""
    kill: KillSwitch | None = signals.kill
    if kill is not None:
        return Terminal("KILLED", "kill_switch", error=kill.describe())
    if signals.cancel_requested:
        return Terminal("CANCELLED", "cancelled", error="the run was cancelled")
    return None
