"""The declarative contracts: ``Agent`` and ``Tool`` documents, ``apiVersion: corral.dev/v1``.

The pydantic models below are the contract; ``corral schema Agent`` prints their JSON Schema.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_VERSION",
    "Agent",
    "AgentLimits",
    "AgentModel",
    "AgentSpec",
    "AgentTools",
    "ApprovalRule",
    "EvaluationGate",
    "MemoryScope",
    "Metadata",
    "Observability",
    "Policy",
    "PolicySpec",
    "Tool",
    "ToolMetadata",
    "ToolSpec",
]

API_VERSION: Literal["corral.dev/v1"] = "corral.dev/v1"

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_TOOL_NAME = r"^[a-z0-9]([-_.a-z0-9]{0,61}[a-z0-9])?$"
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"
# A tool pattern in allow/deny lists: a tool name, optionally ending in ``*`` (``fs.*``).
_TOOL_PATTERN = r"^[a-z0-9][-_.a-z0-9]*\*?$|^\*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(_Strict):
    """Identity of a versioned object."""

    name: Annotated[str, Field(pattern=_NAME, description="DNS-label name, unique per tenant.")]
    version: Annotated[
        str | None,
        Field(
            pattern=_SEMVER,
            description="Semantic version (MAJOR.MINOR.PATCH). Omitted: the registry bumps the "
            "patch of the latest version when the spec changes.",
        ),
    ] = None
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form key/value labels.")


class ToolMetadata(Metadata):
    """Identity of a tool: like :class:`Metadata` but names may contain ``.`` and ``_``."""

    name: Annotated[str, Field(pattern=_TOOL_NAME, description="Tool name, e.g. fs.read_file.")]


class AgentModel(_Strict):
    """Which model the agent's decisions come from.

    Model names are ``provider/model``: ``local/smollm2-135m`` (the embedded model) or
    ``openai/<model>`` (any OpenAI-compatible endpoint configured in settings).
    """

    default: Annotated[str, Field(pattern=r"^[a-z0-9_-]+/\S+$")] = "local/smollm2-135m"
    allowed: list[Annotated[str, Field(pattern=r"^[a-z0-9_-]+/\S+$")]] = Field(
        default_factory=list, description="Other models a run may request. Empty: only default."
    )
    fallback: list[Annotated[str, Field(pattern=r"^[a-z0-9_-]+/\S+$")]] = Field(
        default_factory=list, description="Models tried in order when the default fails."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_output_tokens: Annotated[int | None, Field(ge=1, le=100_000)] = None
    """Maximum tokens the model may generate per call. ``None``: the provider's setting."""


class AgentTools(_Strict):
    """Tools offered to the agent: callable iff it matches ``allowed`` and not ``denied``."""

    allowed: list[Annotated[str, Field(pattern=_TOOL_PATTERN)]] = Field(default_factory=list)
    denied: list[Annotated[str, Field(pattern=_TOOL_PATTERN)]] = Field(default_factory=list)

    def permits(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is allowed and not denied (``*`` suffix matches a prefix)."""
        return _matches_any(tool_name, self.allowed) and not _matches_any(tool_name, self.denied)


def _matches_any(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


class AgentLimits(_Strict):
    """Budgets of one run. Hitting one ends the run ``BUDGET_EXCEEDED`` (or ``TIMED_OUT``)."""

    max_iterations: Annotated[int, Field(ge=1, le=1000)] = 10
    """Model decisions per run (invalid decisions count)."""
    max_tool_calls: Annotated[int, Field(ge=0, le=10_000)] = 20
    """Tool calls per run, allowed or refused."""
    max_wall_clock_seconds: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 300
    """Seconds from the run's first step to its end."""
    max_cost_usd: Annotated[Decimal | None, Field(ge=0)] = None
    """US dollars per run (enforced by the model gateway's cost ledger)."""
    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    """Estimated input tokens per model call; older tool outputs are elided to fit it."""


class MemoryScope(_Strict):
    """A memory scope the agent may read or write (enforced by the memory service)."""

    name: Annotated[str, Field(pattern=_NAME)]
    access: Literal["read", "read_write"] = "read"


class ApprovalRule(_Strict):
    """A person must approve matching tool calls before they execute."""

    tools: list[Annotated[str, Field(pattern=_TOOL_PATTERN)]]
    approver_role: str = "approver"
    required_approvals: Annotated[int, Field(ge=1, le=10)] = 1
    expires_after_seconds: Annotated[int, Field(ge=60)] = 86_400


class EvaluationGate(_Strict):
    """Evals a version must pass before promotion."""

    suite: str
    min_score: Annotated[float, Field(ge=0, le=1)] = 1.0


class Observability(_Strict):
    """What evidence runs of this agent keep."""

    content_logging: bool = False
    """Store prompts and completions in spans (redacted). Off: sizes and token counts only."""
    audit_retention_days: Annotated[int, Field(ge=1)] = 365


class AgentSpec(_Strict):
    """What an agent is and what it may do."""

    description: Annotated[str, Field(min_length=1, max_length=2000)]
    owner: Annotated[str, Field(min_length=1, max_length=200)]
    """Team or person accountable for the agent."""
    risk_tier: Literal["low", "medium", "high", "critical"] = "medium"
    status: Literal["draft", "active", "deprecated", "retired"] = "active"
    model: AgentModel = AgentModel()
    instructions: Annotated[str, Field(min_length=1, max_length=100_000)]
    tools: AgentTools = AgentTools()
    limits: AgentLimits = AgentLimits()
    memory: list[MemoryScope] = Field(default_factory=list)
    approvals: list[ApprovalRule] = Field(default_factory=list)
    evaluation: EvaluationGate | None = None
    observability: Observability = Observability()


class Agent(_Strict):
    """An ``Agent`` document."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Agent"] = "Agent"
    metadata: Metadata
    spec: AgentSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ToolSpec(_Strict):
    """What a tool does, its argument schema and its effects."""

    description: Annotated[str, Field(min_length=1, max_length=4000)]
    type: Literal["builtin", "mcp", "http"] = "builtin"
    """Where the implementation lives: shipped with Corral, an MCP server, or an HTTP API."""
    implementation: str | None = None
    """For ``builtin`` tools: the builtin's name (defaults to the tool name)."""
    side_effect: Literal["read", "write", "destructive"] = "read"
    """``read``: no effect outside Corral; ``write``: changes something; ``destructive``: cannot
    be undone."""
    idempotent: bool = False
    """The tool honours idempotency keys, so a side-effecting call may be retried safely."""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema (draft 2020-12) of the arguments object."""
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30
    max_output_bytes: Annotated[int | None, Field(ge=1)] = None
    """Cap on output size; ``None``: the gateway's setting."""

    @field_validator("input_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        import jsonschema_rs

        try:
            jsonschema_rs.validator_for(value)
        except Exception as exc:  # jsonschema_rs raises ValidationError or ValueError
            raise ValueError(f"not a valid JSON Schema: {exc}") from exc
        if value.get("type") != "object":
            raise ValueError("the arguments schema must have 'type': 'object'")
        return value

    @model_validator(mode="after")
    def _implementation_only_for_builtin(self) -> ToolSpec:
        if self.implementation is not None and self.type != "builtin":
            raise ValueError("'implementation' is only for type 'builtin'")
        return self


class Tool(_Strict):
    """A ``Tool`` document."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Tool"] = "Tool"
    metadata: ToolMetadata
    spec: ToolSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PolicySpec(_Strict):
    """A set of Cedar policies, validated against the schema Corral generates at apply time.

    Each policy carries an ``@id("...")`` annotation; forbid policies may carry
    ``@decision("require_approval")``, ``@approver_role("...")``, ``@required_approvals("N")``
    and ``@reason("...")``; permit policies may carry ``@constraint_<name>("...")``.
    """

    description: Annotated[str, Field(min_length=1, max_length=2000)]
    cedar: Annotated[str, Field(min_length=1, max_length=1_000_000)]
    """Cedar policy text (https://docs.cedarpolicy.com/policies/syntax-policy.html)."""


class Policy(_Strict):
    """A ``Policy`` document: a versioned set of Cedar policies for the tenant."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Policy"] = "Policy"
    metadata: Metadata
    spec: PolicySpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
