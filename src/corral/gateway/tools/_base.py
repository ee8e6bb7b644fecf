"""The tool gateway's shapes: the context of a call and its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from corral.policy import Entity

if TYPE_CHECKING:
    from corral.audit import AuditRecord
    from corral.policy import DecisionRow

__all__ = ["ToolCallContext", "ToolResult"]


@dataclass(frozen=True)
class ToolCallContext:
    """Who calls, from where.

    Attributes:
        tenant_id: Tenant of the run.
        run_id: The run, or ``None`` for calls from outside a managed run.
        step_index: Zero-based step of the run.
        call_index: Zero-based position of the call within the step.
        workspace: Root directory the ``fs.*`` tools may read, or ``None`` (they then refuse).
        allowed_tools: Exactly the tool names this agent may call.
        principal: Who calls: ``agent:NAME`` in managed runs, the authenticated principal
            for calls from outside (inbound MCP); keys the per-agent rate limit. ``None``:
            unknown (the per-agent limit then does not apply).
        call_id: For calls from outside a managed run: the call's own id, which makes its
            idempotency key ``direct:{call_id}`` (a run's calls leave it ``None``).
        principal_entity: The caller as a Cedar entity with its attributes (the run's agent,
            or an inbound service account or agent): the principal of ``secret.use``
            decisions made while the tool runs. ``None``: unknown; secrets are then refused.
        stage: Stage the call is judged in (``context.stage``); ``""`` when unknown.
        requester: Who started the run (``context.requester``); ``""`` when unknown.
        progress: ``await progress(progress, total, message)`` for each progress notification
            the tool sends (MCP ``notifications/progress``); ``None``: not passed on.
        path_decider: The call's policy decision for other paths: ``decide(paths)`` answers
            for each workspace-relative canonical path a tool reaches on its own (a
            directory's entries) whether it is allowed; set by the caller that decided the
            call. ``None``: every path is decided as the call was.
        replay_of: The recorded run the call's run replays (``runs.replay_of``); ``None``:
            not a replay, and the tool gateway's interceptor lets the call through unread.
    """

    tenant_id: str
    run_id: str | None
    step_index: int
    call_index: int
    workspace: Path | None
    allowed_tools: frozenset[str]
    principal: str | None = None
    call_id: str | None = None
    principal_entity: Entity | None = None
    stage: str = ""
    requester: str = ""
    progress: Callable[[float, float | None, str | None], Awaitable[None]] | None = None
    path_decider: Callable[[Sequence[str]], list[bool]] | None = None
    replay_of: str | None = None
    on_secret_use: Callable[[DecisionRow, AuditRecord], None] | None = None

    @property
    def idempotency_key(self) -> str:
        """The call's idempotency key.

        ``{run_id}:{step}:{call_index}`` (DESIGN.md, "Exactly-once effects"), or
        ``direct:{call_id}`` for a call from outside a run (every such call has its own).
        """
        if self.run_id is None and self.call_id is not None:
            return f"direct:{self.call_id}"
        return f"{self.run_id}:{self.step_index}:{self.call_index}"


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call through the gateway.

    Attributes:
        status: ``COMPLETED``; ``FAILED`` (the tool or its arguments failed); ``DENIED`` (not
            allowed to this agent or unknown).
        output: Text for the model: the tool's output (possibly truncated) or the error.
        output_bytes: Size in bytes of the full output before truncation (0 on error).
        truncated: Whether ``output`` was cut to the size cap.
        error: Error message, when not ``COMPLETED``.
        error_type: Stable error code (``path_outside_workspace``, ``invalid_arguments``...).
        tool_version: Version of the tool that ran, when it resolved.
        skipped_by_policy: Entries a directory-walking tool left out because the call's
            policy decision refuses them (see ``corral.gateway.tools._guard``).
    """

    status: Literal["COMPLETED", "FAILED", "DENIED"]
    output: str
    output_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    error_type: str | None = None
    tool_version: str | None = None
    skipped_by_policy: int = 0
