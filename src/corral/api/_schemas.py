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
    "Page",
    "RunCreate",
    "RunOut",
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
    stage: str = Field("dev", pattern=r"^[a-z][a-z0-9-]{0,31}$")


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


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
