"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AgentOut",
    "AgentVersionOut",
    "ApplyRequest",
    "ApplyResultOut",
    "AuditEventOut",
    "AuditVerificationOut",
    "KillSwitchCreate",
    "KillSwitchEngagedOut",
    "KillSwitchOut",
    "KillSwitchRelease",
    "KillSwitchScope",
    "Page",
    "RunCreate",
    "RunEventOut",
    "RunOut",
    "RunResolutionOut",
    "RunResolve",
    "SpanOut",
    "StepOut",
    "ToolCallOut",
    "ToolOut",
]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list. Pass ``next`` back as the cursor parameter for the next page."""

    items: list[T]
    next: str | None = None


class ApplyRequest(BaseModel):
    """Documents to apply in one transaction."""

    model_config = ConfigDict(extra="forbid")

    documents: list[dict[str, Any]] = Field(min_length=1, max_length=500)
    dry_run: bool = False


class ApplyResultOut(BaseModel):
    """What applying one document did."""

    kind: str
    name: str
    action: Literal["created", "updated", "unchanged"]
    version: str
    previous_version: str | None
    digest: str
    diff: str


class AgentOut(BaseModel):
    """An agent with its latest version."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    latest_version: str
    status: str
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    owner: str | None = None
    risk_tier: str | None = None
    digest: str | None = None
    allowed_tools: list[str] = []


class AgentVersionOut(BaseModel):
    """One immutable version of an agent."""

    version: str
    digest: str
    created_at: datetime
    document: dict[str, Any]


class ToolOut(BaseModel):
    """A tool with its latest version."""

    name: str
    type: str
    side_effect: str
    latest_version: str
    digest: str
    description: str
    input_schema: dict[str, Any]


class RunCreate(BaseModel):
    """Start a run of an agent."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=100_000, description="What the agent should do.")
    workspace: str | None = Field(
        None, description="Absolute directory on the server the fs.* tools may read."
    )
    version: str | None = Field(None, description="Agent version; default: the latest.")
    model: str | None = Field(None, description="provider/model allowed by the agent.")
    stage: str = Field(
        "production",
        pattern=r"^[a-z][a-z0-9-]{0,31}$",
        description="Release stage whose bound version runs (API default: production; "
        "`corral run` sends dev).",
    )


class RunOut(BaseModel):
    """A run's state."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    agent_name: str
    agent_version: str
    stage: str
    status: str
    task: str
    workspace: str | None
    model: str
    requested_by: str
    output: str | None
    terminal_reason: str | None
    error: str | None
    step_count: int
    iterations: int
    tool_call_count: int
    input_tokens: int
    output_tokens: int
    trace_id: str
    cancel_requested: bool = False
    """A cancel was requested while the run was ``RUNNING``; its worker ends it ``CANCELLED``."""
    pause_reason: str | None = None
    """Why a paused run (``AWAITING_APPROVAL``, ``IN_DOUBT``) waits, and how to resume it."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunResolve(BaseModel):
    """Settle the in-doubt tool call of an ``IN_DOUBT`` run."""

    model_config = ConfigDict(extra="forbid")

    resolution: Literal["done", "retry", "failed"] = Field(
        description="done: the effect took place (not run again); retry: run the call again "
        "with the same idempotency key; failed: record it failed, the model sees the failure."
    )
    comment: str = Field("", max_length=10_000, description="Why, for the audit log.")


class RunResolutionOut(BaseModel):
    """What resolving an in-doubt call did: the call's key and the run, queued again."""

    idempotency_key: str
    resolution: Literal["done", "retry", "failed"]
    run: RunOut


class RunEventOut(BaseModel):
    """One run event: the ``data:`` of a ``GET /v1/runs/{id}/events`` Server-Sent Event.

    ``type`` is one of ``run.created``, ``step``, ``tool_call``, ``run.paused``,
    ``run.resumed``, ``run.cancel_requested``, ``run.finished``.
    """

    run_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime


KillSwitchScope = Literal["agent", "tenant", "platform"]


class KillSwitchCreate(BaseModel):
    """Engage a kill switch."""

    model_config = ConfigDict(extra="forbid")

    scope: KillSwitchScope = Field(
        description="agent: one agent of your tenant; tenant: every agent of a tenant; "
        "platform: every run."
    )
    target: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The agent's name (required for scope agent); a tenant id (default: yours); "
        "'*' for the platform (the default).",
    )
    reason: str = Field(
        min_length=1,
        max_length=10_000,
        description="Why, for the audit log and for every caller that is refused.",
    )


class KillSwitchRelease(BaseModel):
    """Release an engaged kill switch."""

    model_config = ConfigDict(extra="forbid")

    scope: KillSwitchScope
    target: str | None = Field(
        None, min_length=1, max_length=200, description="As when it was engaged."
    )


class KillSwitchOut(BaseModel):
    """A kill switch, engaged or released."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    tenant_id: str
    """The tenant of an agent or tenant switch; ``*`` for the platform's."""
    scope: KillSwitchScope
    target: str
    reason: str
    engaged_by: str
    engaged_at: datetime
    released_by: str | None
    released_at: datetime | None


class KillSwitchEngagedOut(KillSwitchOut):
    """A switch just engaged, with the number of runs it ended at once."""

    killed_runs: int
    """Queued and paused runs ended ``KILLED`` at once; running runs stop at their next check
    (before a step or a tool call)."""


class ToolCallOut(BaseModel):
    """One tool call of a step."""

    model_config = ConfigDict(from_attributes=True)

    call_index: int
    idempotency_key: str
    tool_name: str
    tool_version: str | None
    arguments: dict[str, Any]
    status: str
    output: str | None
    output_bytes: int
    truncated: bool
    error: str | None
    error_type: str | None


class StepOut(BaseModel):
    """One checkpointed step."""

    index: int
    kind: str
    model: str
    decision: dict[str, Any]
    error: str | None
    input_tokens: int
    output_tokens: int
    started_at: datetime
    finished_at: datetime
    tool_calls: list[ToolCallOut]


class SpanOut(BaseModel):
    """One stored span."""

    span_id: str
    parent_span_id: str | None
    trace_id: str
    name: str
    kind: str
    status: str
    start_time: datetime
    end_time: datetime
    duration_ms: float
    attributes: dict[str, Any]


class AuditEventOut(BaseModel):
    """One audit event."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    occurred_at: datetime
    actor: str
    action: str
    subject: str
    outcome: str
    run_id: str | None
    trace_id: str | None
    policy_decision_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditVerificationOut(BaseModel):
    """Result of recomputing a tenant's audit chain."""

    ok: bool
    tenant_id: str
    events_checked: int
    first_bad_seq: int | None
    first_bad_id: int | None
    reason: str | None
