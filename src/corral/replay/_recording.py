"""A recorded run as replay serves it: its model decisions and its tool results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from corral.audit import canonical_json
from corral.gateway.models import FinalAnswer, ModelResponse, ToolCall
from corral.gateway.tools import ToolResult

__all__ = ["RecordedCall", "Recording"]

_DECISION_KINDS = frozenset({"tool_calls", "final_answer", "invalid_decision"})
"""Step kinds that hold a model output (each adds one assistant message to the context)."""

_SERVED: dict[str, Literal["COMPLETED", "FAILED", "DENIED"]] = {
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "DENIED": "DENIED",
}
"""Recorded call outcomes replay serves; a call left ``STARTED`` (in doubt) has none."""


def call_key(tool: str, arguments: dict[str, Any]) -> bytes:
    """What identifies a call across runs: the tool name and its canonical arguments."""
    return canonical_json({"tool": tool, "arguments": arguments})


@dataclass(frozen=True)
class RecordedCall:
    """One recorded tool call with its outcome."""

    step_index: int
    call_index: int
    tool: str
    arguments: dict[str, Any]
    status: str
    output: str
    output_bytes: int
    truncated: bool
    error: str | None
    error_type: str | None

    def result(self, tool_version: str | None) -> ToolResult:
        """The recorded outcome as the gateway's result (``tool_version``: this run's tool)."""
        return ToolResult(
            _SERVED[self.status],
            self.output,
            output_bytes=self.output_bytes,
            truncated=self.truncated,
            error=self.error,
            error_type=self.error_type,
            tool_version=tool_version,
        )


@dataclass
class Recording:
    """The model outputs and tool results of a finished run, in order.

    Attributes:
        run_id: The recorded run.
        decisions: ``(step kind, stored decision)`` of each model output, in order.
        calls: Its tool calls that have an outcome, by :func:`call_key`, in order.
    """

    run_id: str
    decisions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    calls: dict[bytes, list[RecordedCall]] = field(default_factory=dict)

    @classmethod
    def of(cls, run_id: str, steps: list[tuple[Any, list[Any]]]) -> Recording:
        """Build from :func:`corral.runtime.list_steps` rows of the recorded run."""
        recording = cls(run_id)
        for step, calls in steps:
            if str(step.kind) in _DECISION_KINDS:
                recording.decisions.append((str(step.kind), dict(step.decision)))
            for call in calls:
                if str(call.status) not in _SERVED:
                    continue
                recorded = RecordedCall(
                    call.step_index,
                    call.call_index,
                    call.tool_name,
                    dict(call.arguments),
                    str(call.status),
                    call.output or call.error or "",
                    call.output_bytes,
                    call.truncated,
                    call.error,
                    call.error_type,
                )
                recording.calls.setdefault(call_key(call.tool_name, call.arguments), [])
                recording.calls[call_key(call.tool_name, call.arguments)].append(recorded)
        return recording

    def response(self, index: int) -> ModelResponse | None:
        """The ``index``-th recorded model output (zero-based), or ``None`` past the last."""
        if index >= len(self.decisions):
            return None
        kind, decision = self.decisions[index]
        if kind == "invalid_decision":
            return ModelResponse(
                decision=None,
                raw=str(decision.get("raw", "")),
                error=str(decision.get("error", "")),
                response_model=f"replay/{self.run_id}",
            )
        if kind == "final_answer":
            answer = FinalAnswer(
                str(decision.get("final_answer", "")), tuple(decision.get("sources", ()))
            )
            return ModelResponse(
                decision=answer, raw=answer.text, response_model=f"replay/{self.run_id}"
            )
        calls = [
            ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
            for c in decision.get("tool_calls", [])
        ]
        raw = canonical_json(decision["tool_calls"]).decode()
        return ModelResponse(decision=calls, raw=raw, response_model=f"replay/{self.run_id}")

    def call(
        self, tool: str, arguments: dict[str, Any], *, step_index: int, call_index: int
    ) -> RecordedCall | None:
        """The recorded outcome of a call of ``tool`` with ``arguments``, or ``None``.

        The call recorded at the same step and position is preferred (an exact replay makes
        the same calls in the same places); otherwise the first recorded with the same tool
        and canonical arguments.
        """
        found = self.calls.get(call_key(tool, arguments), [])
        for recorded in found:
            if (recorded.step_index, recorded.call_index) == (step_index, call_index):
                return recorded
        return found[0] if found else None
