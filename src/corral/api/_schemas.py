"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from corral.evals import EVAL_SANDBOX_STAGE, EVAL_STAGE
from corral.runtime import session_id_problem

__all__ = [
    "MAX_CURSOR",
    "AgentOut",
    "AgentVersionOut",
    "ApplyRequest",
    "ApplyResultOut",
    "ApprovalApprove",
    "ApprovalOut",
    "ApprovalReject",
    "ApprovalVoteOut",
    "AuditEventOut",
    "AuditVerificationOut",
    "FeedbackCreate",
    "FeedbackOut",
    "KillSwitchCreate",
    "KillSwitchEngagedOut",
    "KillSwitchOut",
    "KillSwitchRelease",
    "KillSwitchScope",
    "Page",
    "PolicyOut",
    "PolicySetOut",
    "PolicySourceOut",
    "PromotionCreate",
    "PromotionOut",
    "PromptOut",
    "PromptVersionOut",
    "ReplayCreate",
    "RollbackCreate",
    "RunCreate",
    "RunEventOut",
    "RunOut",
    "RunResolutionOut",
    "RunResolve",
    "SecretOut",
    "SecretSet",
    "SpanOut",
    "StageBindingOut",
    "StepOut",
    "ToolCallOut",
    "ToolOut",
    "USDText",
    "usd_text",
]

T = TypeVar("T")

MAX_CURSOR = 2**63 - 1
"""The largest integer cursor (``after``, ``Last-Event-ID``): a signed 64-bit column's maximum."""


class Page(BaseModel, Generic[T]):
    """One page of a list. Pass ``next`` back as the cursor parameter for the next page."""

    items: list[T]
    next: str | None = None


class ApplyRequest(BaseModel):
    """Documents to apply in one transaction."""

    model_config = ConfigDict(extra="forbid")

    documents: list[dict[str, Any]] = Field(min_length=1, max_length=500)
    dry_run: bool = False
    strict: bool = Field(
        False,
        description="Refuse the apply (422) when an Agent allows a tool name or wildcard "
        "that matches no registered tool; otherwise such entries come back as warnings.",
    )


class ApplyResultOut(BaseModel):
    """What applying one document did."""

    kind: str
    name: str
    action: Literal["created", "updated", "unchanged"]
    version: str
    previous_version: str | None
    digest: str
    diff: str
    warnings: list[str] = Field(
        default_factory=list,
        description="What was applied but looks wrong, e.g. an allowed tool that matches no "
        "registered tool.",
    )


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
        "`corral run` sends dev). `eval` and `eval-sandbox` are reserved for eval runs.",
    )
    session_id: str | None = Field(
        None,
        description="The caller's session (1-128 of A-Za-z0-9._:-), stored on the run; an "
        "experiment keyed by session gives one session's runs the same variant.",
    )

    @field_validator("session_id")
    @classmethod
    def _valid_session_id(cls, session_id: str | None) -> str | None:
        """A session id is 1 to 128 of ``A-Za-z0-9._:-`` (422 with what to send otherwise)."""
        problem = None if session_id is None else session_id_problem(session_id)
        if problem is not None:
            raise ValueError(problem)
        return session_id

    @field_validator("stage")
    @classmethod
    def _not_an_eval_stage(cls, stage: str) -> str:
        """The eval stages run only the evals package's case runs (their policy differs)."""
        if stage in (EVAL_STAGE, EVAL_SANDBOX_STAGE):
            raise ValueError(
                f"stage {stage!r} is reserved for eval runs; run an eval suite with "
                "`corral eval run SUITE --agent AGENT@VERSION` (POST /v1/evals) instead"
            )
        return stage


def usd_text(value: object) -> object:
    """US dollars as exact decimal text in fixed notation (``0.00012``, never ``1.2E-4``)."""
    if isinstance(value, (Decimal, int)):
        text = f"{Decimal(value):f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text or "0"
    return value


USDText = Annotated[str, BeforeValidator(usd_text)]
"""US dollars as decimal text (exact; JSON numbers would be floats)."""


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
    session_id: str | None = None
    """The caller's session given at creation (``None``: none)."""
    output: str | None
    terminal_reason: str | None
    error: str | None
    step_count: int
    iterations: int
    tool_call_count: int
    input_tokens: int
    output_tokens: int
    cost_usd: USDText = "0"
    """US dollars the run's model calls cost so far (decimal text, exact)."""
    trace_id: str
    cancel_requested: bool = False
    """A cancel was requested while the run was ``RUNNING``; its worker ends it ``CANCELLED``."""
    pause_reason: str | None = None
    """Why a paused run (``AWAITING_APPROVAL``, ``IN_DOUBT``) waits, and how to resume it."""
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    sources: list[str] = Field(default_factory=list)
    """Workspace paths the final answer cites (agents with ``answer.cite_sources``)."""


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
    tenant_id: str
    """The chain the event belongs to (``*`` for platform-wide events)."""
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


class ApprovalVoteOut(BaseModel):
    """One principal's vote on an approval request."""

    model_config = ConfigDict(from_attributes=True)

    principal: str
    accountable: str
    """The human the vote counts as (a service account's creator)."""
    role: str
    """The approver role the vote was cast with."""
    vote: Literal["approve", "reject"]
    comment: str
    """The approver's comment, or the rejection's reason."""
    created_at: datetime


class ApprovalOut(BaseModel):
    """An approval request: what it would allow, who may decide, and the votes so far."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: Literal["tool_call", "promotion"]
    status: Literal["pending", "approved", "rejected", "expired", "withdrawn"]
    action: str
    """The governed action: ``tool.call`` or ``agent.promote``."""
    subject: str
    """``tool:<name>`` or ``agent:<name>@<version>-><stage>``."""
    tool: str | None
    """The tool a ``tool_call`` request would let the run call."""
    run_id: str | None
    run_status: str | None
    """The run's status now (``AWAITING_APPROVAL`` while it waits)."""
    step_index: int | None
    call_index: int | None
    idempotency_key: str | None
    arguments: dict[str, Any]
    """The call's arguments, values under secret-looking keys redacted."""
    arguments_digest: str
    """``sha256:<hex>`` of the canonical arguments: an approval covers only this exact call."""
    reason: str
    """Why policy asks for approval."""
    approver_roles: list[str]
    """A voter must hold one of these roles."""
    required_approvals: int
    """Distinct approving principals needed."""
    received_approvals: int
    """Distinct principals who approved so far."""
    policy_ids: list[str]
    policy_decision_id: str
    requested_by: str
    """Who requested the run or promotion; they may not approve it."""
    created_at: datetime
    expires_at: datetime
    """A request still pending then expires and its run ends ``REJECTED``."""
    decided_at: datetime | None
    votes: list[ApprovalVoteOut]


class ApprovalApprove(BaseModel):
    """Approve a pending request."""

    model_config = ConfigDict(extra="forbid")

    comment: str = Field("", max_length=10_000, description="Why (what you checked), audited.")


class ApprovalReject(BaseModel):
    """Reject a pending request; its run ends ``REJECTED`` (``approval_rejected``)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=10_000,
        description="Why; audited and shown as the run's error.",
    )


_STAGE_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"


class PromotionCreate(BaseModel):
    """Promote a version of an agent to a stage."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        min_length=1,
        max_length=32,
        description="The version to promote (GET /v1/agents/{name}/versions lists them).",
    )
    stage: str = Field(
        pattern=_STAGE_PATTERN,
        description="A configured stage other than dev (dev follows the latest version).",
    )


class RollbackCreate(BaseModel):
    """Roll a stage of an agent back to the version it ran before."""

    model_config = ConfigDict(extra="forbid")

    stage: str = Field(pattern=_STAGE_PATTERN, description="A configured stage other than dev.")


class PromotionOut(BaseModel):
    """A promotion or rollback of a stage: done, awaiting approval, or rejected."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    agent_name: str
    kind: Literal["promote", "rollback"]
    stage: str
    version: str
    """The version it binds (a rollback: the version rolled back to)."""
    digest: str
    """``sha256:<hex>`` of the version's content: versions are immutable."""
    previous_version: str | None
    """The version the stage ran before (``None``: the first binding)."""
    status: Literal["pending_approval", "done", "rejected"]
    actor: str
    """Who asked for it."""
    created_at: datetime
    completed_at: datetime | None
    approval_id: str | None
    """The approval request it waits on (``corral approve ID``), if any."""
    policy_decision_id: str | None
    approver_roles: list[str]
    """Roles that may approve it (promotions that need approval)."""
    required_approvals: int
    """Approvals it needs; 0 when none."""


class StageBindingOut(BaseModel):
    """The version a stage of an agent runs now."""

    model_config = ConfigDict(from_attributes=True)

    stage: str
    version: str
    digest: str
    """``sha256:<hex>`` of the version's content."""
    bound_by: str
    bound_at: datetime


class PolicySourceOut(BaseModel):
    """Cedar policy text from one source (the default set)."""

    id: str
    """The source id; a lone policy without ``@id`` takes it as its policy id."""
    text: str


class PolicyOut(BaseModel):
    """A tenant's Policy document at its latest version."""

    name: str
    version: str
    digest: str
    """``sha256:<hex>`` of the version's content."""
    description: str
    cedar: str
    """The Cedar policy text."""
    source_id: str
    """The id the engine compiles the text under (``name@version``)."""
    created_at: datetime
    updated_at: datetime


class PolicySetOut(BaseModel):
    """A tenant's effective policy set: compile ``defaults`` then ``items``."""

    tenant_id: str
    defaults: list[PolicySourceOut]
    """Corral's default policy set."""
    items: list[PolicyOut]
    """The tenant's Policy documents, by name."""


class SecretSet(BaseModel):
    """The value of a secret to set (a new version when the secret exists)."""

    model_config = ConfigDict(extra="forbid")

    value: SecretStr = Field(min_length=1)
    """The plaintext, at most ``secrets.max_value_bytes`` UTF-8 bytes. Never returned."""


class SecretOut(BaseModel):
    """A secret's metadata; no response ever carries a secret's value."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    """1 when created, +1 on every set (rotation)."""
    created_by: str
    updated_by: str
    """Principal that set the current version."""
    created_at: datetime
    updated_at: datetime
    """When the current version was set."""


class PromptOut(BaseModel):
    """A prompt with its latest version."""

    name: str
    latest_version: str
    digest: str
    description: str
    updated_at: datetime


class PromptVersionOut(BaseModel):
    """One immutable version of a prompt."""

    version: str
    digest: str
    created_at: datetime
    description: str
    content: str


class FeedbackCreate(BaseModel):
    """A rating of a run's answer."""

    model_config = ConfigDict(extra="forbid")

    score: Literal[-1, 0, 1] = Field(description="-1: a bad answer, 0: neutral, 1: a good answer.")
    label: Annotated[str | None, Field(min_length=1, max_length=64)] = Field(
        None, description="A short category, e.g. `wrong_tool` or `hallucination`."
    )
    comment: Annotated[str | None, Field(max_length=4000)] = None


class FeedbackOut(BaseModel):
    """One rating of a run, with who gave it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    run_id: str
    agent_name: str
    agent_version: str
    score: int
    label: str | None
    comment: str | None
    principal: str
    created_at: datetime


class ReplayCreate(BaseModel):
    """Replay a recorded run: exactly, or with another agent version (``what_if``)."""

    model_config = ConfigDict(extra="forbid")

    agent: Annotated[str | None, Field(min_length=1, max_length=63)] = Field(
        None, description="Agent to run instead of the recorded run's (a what-if replay)."
    )
    version: Annotated[str | None, Field(min_length=1, max_length=32)] = Field(
        None, description="Agent version to run (a what-if replay); omitted: the latest."
    )
