"""The states of runs, steps and tool calls.

Stored in ``runs.status``, ``steps.kind`` and ``tool_calls.status``. Each is a
:class:`~enum.StrEnum`: a member equals, hashes and serialises (JSON, the audit chain's
canonical JSON) as its value, so ``RunStatus.SUCCEEDED == "SUCCEEDED"``.
"""

from __future__ import annotations

from enum import StrEnum, unique
from typing import Final

__all__ = [
    "PAUSED_STATUSES",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "RunStatus",
    "StepKind",
    "ToolCallStatus",
]


@unique
class RunStatus(StrEnum):
    """A run's state: ``QUEUED -> RUNNING -> (paused -> QUEUED -> RUNNING)* -> terminal``."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    """Paused until a tool call's approval request is decided."""
    IN_DOUBT = "IN_DOUBT"
    """Paused: a side-effecting tool call may or may not have happened; a person settles it."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    """An approval was refused or expired."""
    TIMED_OUT = "TIMED_OUT"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    KILLED = "KILLED"
    LOOP_DETECTED = "LOOP_DETECTED"
    """The agent repeated the same tool call ``limits.max_repeated_calls`` times."""


@unique
class StepKind(StrEnum):
    """What a checkpointed step ended with."""

    TOOL_CALLS = "tool_calls"
    FINAL_ANSWER = "final_answer"
    INVALID_DECISION = "invalid_decision"
    MODEL_ERROR = "model_error"


@unique
class ToolCallStatus(StrEnum):
    """A tool call's state: ``STARTED`` before it executes, then how it ended."""

    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DENIED = "DENIED"
    RETRY = "RETRY"
    """A person settled an in-doubt call as ``retry``: it runs again with the same key."""
    REPEATED = "REPEATED"
    """Not executed: the same tool with the same arguments was called earlier in the run; the
    model got a feedback message instead of a fresh result (loop detection)."""


TERMINAL_STATUSES: Final = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.REJECTED,
        RunStatus.TIMED_OUT,
        RunStatus.BUDGET_EXCEEDED,
        RunStatus.KILLED,
        RunStatus.LOOP_DETECTED,
    }
)
"""A run in one of these states never changes again (DESIGN.md, "The main job")."""

PAUSED_STATUSES: Final = (RunStatus.AWAITING_APPROVAL, RunStatus.IN_DOUBT)
"""A run in one of these holds no worker; resuming puts it back in the queue."""

RUN_STATUSES: Final = frozenset(RunStatus)
"""Every run status."""
