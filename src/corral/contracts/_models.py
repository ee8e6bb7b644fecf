"""The declarative contracts: ``Agent`` and ``Tool`` documents, ``apiVersion: corral.dev/v1``.

The pydantic models below are the contract; ``corral schema Agent`` prints their JSON Schema.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "API_VERSION",
    "Agent",
    "AgentLimits",
    "AgentModel",
    "AgentSlo",
    "AgentSpec",
    "AgentTools",
    "ApprovalRule",
    "EvaluationGate",
    "HttpParameter",
    "HttpToolSpec",
    "McpServer",
    "McpServerSpec",
    "McpServerTools",
    "McpToolRef",
    "MemoryScope",
    "Metadata",
    "Model",
    "ModelCapabilities",
    "ModelDecoding",
    "ModelDeployment",
    "ModelPrices",
    "ModelSpec",
    "Observability",
    "Policy",
    "PolicySpec",
    "Prompt",
    "PromptSpec",
    "Tool",
    "ToolMetadata",
    "ToolSpec",
]

API_VERSION: Literal["corral.dev/v1"] = "corral.dev/v1"

SCHEMA_CHECKED: Final[Mapping[str, bool]] = MappingProxyType({"corral_schema_checked": True})
"""Validation context (``Tool.model_validate(document, context=SCHEMA_CHECKED)``) for documents
whose ``input_schema`` Corral itself wrote and a test compiles: Corral's built-in tools, built at
import. It skips compiling the schema with ``jsonschema_rs`` (its ``type: object`` is still
required), so importing Corral does not load that 6 MB extension module; every other document is
compiled as usual."""

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_TOOL_NAME = r"^[a-z0-9]([-_.a-z0-9]{0,61}[a-z0-9])?$"
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"
# A tool pattern in allow/deny lists: a tool name, optionally ending in ``*`` (``fs.*``).
_TOOL_PATTERN = r"^[a-z0-9][-_.a-z0-9]*\*?$|^\*$"
_PROMPT_REF = (
    r"^prompts/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)@((0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*))$"
)
"""An agent's ``instructions_ref``: ``prompts/NAME@VERSION`` (group 1: name, group 3: version)."""


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


# A model name: a ``provider/model`` name, or a model alias (a DNS label naming a ``Model``).
_MODEL_NAME = r"^[a-z0-9_-]+/\S+$|^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class AgentModel(_Strict):
    """Which model the agent's decisions come from.

    Model names are aliases (``default``, ``fast``, ``smart``: a tenant's ``Model`` document,
    else the platform's default set) or ``provider/model`` names: ``local/smollm2-135m`` (the
    embedded model) or ``openai/<model>`` (the OpenAI-compatible endpoint in settings), each
    its own single deployment.
    """

    default: Annotated[str, Field(pattern=_MODEL_NAME)] = "local/smollm2-135m"
    allowed: list[Annotated[str, Field(pattern=_MODEL_NAME)]] = Field(
        default_factory=list, description="Other models a run may request. Empty: only default."
    )
    fallback: list[Annotated[str, Field(pattern=_MODEL_NAME)]] = Field(
        default_factory=list, description="Models tried in order when the default fails."
    )
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    max_output_tokens: Annotated[int | None, Field(ge=1, le=100_000)] = None
    """Maximum tokens the model may generate per call. ``None``: the provider's setting."""
    # Left out of documents when unset, so existing agents keep their digests.
    cache_ttl_seconds: Annotated[
        int | None, Field(ge=1, le=30 * 24 * 3600, exclude_if=lambda v: v is None)
    ] = None
    """Seconds a model response stays in the tenant's exact-match response cache; ``None``
    (the default): responses are not cached. Only deterministic requests are cached
    (temperature 0 or a fixed seed), keyed by every field that changes the output."""

    @field_validator("default", "allowed", "fallback")
    @classmethod
    def _not_replay(cls, value: str | list[str]) -> str | list[str]:
        # ``replay/RUN`` serves a recorded run's outputs: only `corral runs replay` uses it.
        for name in [value] if isinstance(value, str) else value:
            if name.startswith("replay/"):
                raise ValueError(
                    f"{name!r}: the 'replay' provider is reserved for `corral runs replay`; "
                    "name another model"
                )
        return value


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
    """US dollars per run: a model call whose pessimistic cost estimate would take the run
    over it is not made (the run ends ``BUDGET_EXCEEDED``)."""
    max_input_tokens: Annotated[int | None, Field(ge=1)] = None
    """Estimated input tokens per model call; older tool outputs are elided to fit it."""
    max_cost_usd_per_day: Annotated[Decimal | None, Field(ge=0)] = None
    """US dollars per UTC day for all runs of this agent in its tenant (reserved before each
    model call, like ``max_cost_usd``)."""
    max_repeated_calls: Annotated[int, Field(ge=1, le=1000)] = 3
    """Repeated tool calls per run (the same tool with the same canonical arguments as an
    earlier call of the run). A repeat is not executed: the model gets a feedback message
    instead. At this many repeats the run ends ``LOOP_DETECTED``."""


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


class SuiteGate(_Strict):
    """One eval suite a version must pass, and the thresholds its latest eval must meet.

    A threshold left unset falls back to the suite's own (the eval's ``passed``).
    """

    suite: Annotated[str, Field(pattern=_NAME)]
    min_success_rate: Annotated[float | None, Field(ge=0, le=1)] = None
    """Share of case runs whose graders all pass (0..1)."""
    max_policy_violations: Annotated[int, Field(ge=0)] = 0
    """Tool calls denied by policy or needing approval during the eval."""
    max_median_cost_usd: Annotated[Decimal | None, Field(ge=0)] = None
    """Median model cost of a case run, US dollars."""
    max_p95_latency_seconds: Annotated[float | None, Field(gt=0)] = None
    """95th percentile case-run latency, seconds."""


class ManualReviewConditions(_Strict):
    """Changes, against the version the stage runs now, that add a person's approval."""

    tool_set_changed: bool = False
    """The allowed or denied tool patterns differ."""
    write_tool_added: bool = False
    """A registered ``write`` or ``destructive`` tool became allowed."""
    memory_writes_enabled: bool = False
    """A memory scope became ``read_write``."""
    risk_tier_raised: bool = False
    """``risk_tier`` went up (low < medium < high < critical)."""


class EvaluationGate(_Strict):
    """Evals a version must pass before promotion to a gated stage (``staging``, ``production``)."""

    suites: Annotated[list[SuiteGate], Field(min_length=1, max_length=20)]
    manual_review_required_if: ManualReviewConditions = ManualReviewConditions()
    reviewer_role: Annotated[str, Field(min_length=1, max_length=100)] = "approver"
    """Role that approves a promotion a manual-review condition matched."""


class Observability(_Strict):
    """What evidence runs of this agent keep."""

    content_logging: bool = False
    """Store prompts and completions in spans (redacted). Off: sizes and token counts only."""
    audit_retention_days: Annotated[int, Field(ge=1)] = 365


class AgentAnswer(_Strict):
    """What the agent's final answer must carry."""

    cite_sources: bool = False
    """The final answer must cite ``sources``: one or more workspace paths that this run's
    tool calls returned (listed, read or found). Under a JSON decision schema (the embedded
    model) the paths are an ``enum``, so a grammar-constrained model can only cite files it
    saw; until a tool has returned a path, the final answer is not offered (except on the last
    iteration, which offers no tools). Needs ``json`` tool calling: a native-tool-calling model
    has no way to cite, and its answers are refused."""


class AgentSlo(_Strict):
    """Service-level objectives of an agent, judged by the workers over the runs in the store.

    The workers judge them every ``alerts.slo_interval_seconds``. A breach (and its recovery)
    records an ``slo.breached`` (``slo.recovered``) audit event once per transition and calls
    the platform's alert webhooks. Error rate and latency are
    judged over the runs that ended in the last ``window_minutes``, and only when at least
    ``min_runs`` of them did; cost over the UTC day so far.
    """

    error_rate_max: Annotated[float | None, Field(ge=0, le=1)] = None
    """Largest share (0..1) of judged runs that may end in error (``FAILED``,
    ``TIMED_OUT``, ``BUDGET_EXCEEDED``, ``LOOP_DETECTED``). Runs a person ended
    (``CANCELLED``, ``KILLED``, ``REJECTED``) are not judged."""
    p95_latency_seconds_max: Annotated[float | None, Field(gt=0)] = None
    """Largest 95th percentile of run latency, seconds from creation to the terminal state
    (queueing and approval waits included: what the caller waits)."""
    cost_usd_per_day_max: Annotated[Decimal | None, Field(ge=0)] = None
    """Largest model-call spend of this agent in its tenant per UTC day, US dollars (the
    cost ledger); unlike ``limits.max_cost_usd_per_day`` it alerts, it does not refuse."""
    window_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 60
    """Minutes of ended runs that error rate and latency are judged over."""
    min_runs: Annotated[int, Field(ge=1, le=100_000)] = 10
    """Ended runs the window needs before error rate and latency are judged at all."""

    @model_validator(mode="after")
    def _has_an_objective(self) -> AgentSlo:
        if (
            self.error_rate_max is None
            and self.p95_latency_seconds_max is None
            and self.cost_usd_per_day_max is None
        ):
            raise ValueError(
                "an 'slo' block needs at least one objective: set error_rate_max, "
                "p95_latency_seconds_max or cost_usd_per_day_max, or remove 'slo'"
            )
        return self


class AgentSpec(_Strict):
    """What an agent is and what it may do."""

    description: Annotated[str, Field(min_length=1, max_length=2000)]
    owner: Annotated[str, Field(min_length=1, max_length=200)]
    """Team or person accountable for the agent."""
    risk_tier: Literal["low", "medium", "high", "critical"] = "medium"
    status: Literal["draft", "active", "deprecated", "retired"] = "active"
    model: AgentModel = AgentModel()
    # Left out of documents when unset; applied with ``instructions_ref``, the registry fills it
    # with the referenced prompt's content, so a stored version always carries its instructions.
    instructions: Annotated[
        str | None, Field(min_length=1, max_length=100_000, exclude_if=lambda v: v is None)
    ] = None
    """The system instructions, inline. Give these or ``instructions_ref``, not both."""
    instructions_ref: Annotated[
        str | None, Field(pattern=_PROMPT_REF, exclude_if=lambda v: v is None)
    ] = None
    """A ``Prompt`` version of the tenant, ``prompts/NAME@VERSION``, resolved when the agent is
    applied: its content becomes the instructions and its digest part of the agent version's
    digest, so pointing at another prompt version makes a new agent version."""
    tools: AgentTools = AgentTools()
    limits: AgentLimits = AgentLimits()
    memory: list[MemoryScope] = Field(default_factory=list)
    approvals: list[ApprovalRule] = Field(default_factory=list)
    evaluation: EvaluationGate | None = None
    observability: Observability = Observability()
    # Left out of documents when unset, so existing agents keep their digests.
    data_residency: Annotated[
        list[Annotated[str, Field(pattern=_NAME)]] | None,
        Field(min_length=1, exclude_if=lambda v: v is None),
    ] = None
    """Regions whose model deployments this agent may use (``["eu-west"]``); a deployment
    outside them (or with no region) is never called. ``None``: any region."""
    answer: AgentAnswer = AgentAnswer()
    """Requirements on the final answer."""
    # Left out of documents when unset, so existing agents keep their digests.
    slo: Annotated[AgentSlo | None, Field(exclude_if=lambda v: v is None)] = None
    """Service-level objectives, alerted on when breached (see :class:`AgentSlo`)."""

    @model_validator(mode="after")
    def _has_instructions(self) -> AgentSpec:
        if self.instructions is None and self.instructions_ref is None:
            raise ValueError(
                "give 'instructions' (inline text) or 'instructions_ref' (prompts/NAME@VERSION)"
            )
        return self

    @property
    def system_instructions(self) -> str:
        """The instructions the run starts with (a stored version always has them)."""
        return self.instructions or ""


class Agent(_Strict):
    """An ``Agent`` document."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Agent"] = "Agent"
    metadata: Metadata
    spec: AgentSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class McpToolRef(_Strict):
    """Where an ``mcp`` tool lives upstream, and the digest its version is pinned to."""

    server: Annotated[str, Field(pattern=_NAME)]
    """Name of the registered ``McpServer``."""
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    """The tool's name on the upstream server (as ``tools/list`` gives it)."""
    digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
    """``sha256:<hex>`` over the canonical JSON of the upstream tool's name, description,
    input schema and annotations."""


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][-.A-Za-z0-9_]*)\}")
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?")


class HttpParameter(_Strict):
    """Where one argument of an ``http`` tool goes in the request.

    ``in``: ``path`` (fills the URL placeholder ``{name}``, percent-encoded), ``query``,
    ``header``, ``body`` (one field of a JSON object body) or ``body_root`` (the whole JSON
    body). Arguments with no entry go to the path when the URL has their placeholder, else
    to the query for ``GET``/``HEAD``/``OPTIONS``/``DELETE`` and to the JSON body otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    location: Literal["path", "query", "header", "body", "body_root"] = Field(alias="in")
    name: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    """Name on the wire (placeholder, query key, header name, body field); ``None``: the
    argument's name."""


class HttpToolSpec(_Strict):
    """How an ``http`` tool calls its API (an OpenAPI operation, or written by hand).

    Outbound requests refuse private, loopback, link-local, unspecified, multicast and
    reserved addresses (and host names resolving to one) unless ``allow_hosts`` names the
    host or a network holding the address (SSRF guard); schemes other than http(s) too.
    """

    method: Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: Annotated[str, Field(min_length=8, max_length=4000)]
    """Absolute ``http(s)`` URL; its path and query may hold placeholders ``{name}``."""
    parameters: dict[str, HttpParameter] = Field(default_factory=dict)
    """Argument name -> where it goes (see :class:`HttpParameter`)."""
    headers: dict[Annotated[str, Field(pattern=_HEADER_NAME)], str] = Field(default_factory=dict)
    """Headers sent with every call; values may reference secrets as ``${secret:NAME}``,
    injected only at execution (``Authorization: Bearer ${secret:GITHUB_TOKEN}``)."""
    query: dict[str, str] = Field(default_factory=dict)
    """Query parameters sent with every call; values may reference secrets like headers."""
    allow_hosts: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list
    )
    """Host names (``localhost``, ``*.corp.example``), addresses (``127.0.0.1``, ``::1``) or
    networks (``10.0.0.0/8``) this tool may reach although they are not public."""
    retries: Annotated[int | None, Field(ge=0, le=10)] = None
    """Retries after the first attempt on retryable errors; ``None``: the gateway's setting."""
    follow_redirects: bool = True
    """Follow up to 5 redirects, each target checked by the SSRF guard; the configured
    headers and query are not sent to another origin."""

    @field_validator("url")
    @classmethod
    def _url_is_absolute_http(cls, value: str) -> str:
        parts = urlsplit(_PLACEHOLDER.sub("x", value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an absolute http:// or https:// URL, got {value!r}")
        if "{" in urlsplit(value).netloc:
            raise ValueError("placeholders may appear in the path and query only, not the host")
        if parts.username or parts.password:
            raise ValueError(
                "credentials in the URL are refused; send them in 'headers' with ${secret:NAME}"
            )
        if parts.fragment:
            raise ValueError("a URL fragment is never sent; remove it")
        return value

    @field_validator("headers", "query")
    @classmethod
    def _no_line_breaks(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if "\r" in item or "\n" in item:
                raise ValueError(f"the value of {key!r} contains a line break")
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _hosts_are_valid(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                if not _HOST_NAME.fullmatch(entry):
                    raise ValueError(
                        f"{entry!r} is neither a host name, an IP address nor a network "
                        "such as 10.0.0.0/8"
                    ) from None
        return value

    @model_validator(mode="after")
    def _parameters_fit(self) -> HttpToolSpec:
        roots = [a for a, p in self.parameters.items() if p.location == "body_root"]
        fields = [a for a, p in self.parameters.items() if p.location == "body"]
        if len(roots) > 1 or (roots and fields):
            raise ValueError("a 'body_root' parameter must be the only body parameter")
        if (roots or fields) and self.method in ("GET", "HEAD", "OPTIONS"):
            raise ValueError(f"{self.method} requests carry no body; map those arguments elsewhere")
        placeholders = set(self.placeholders())
        for argument, parameter in self.parameters.items():
            wire = parameter.name or argument
            if parameter.location == "path" and wire not in placeholders:
                raise ValueError(f"path parameter {argument!r}: the URL has no {{{wire}}}")
        return self

    def placeholders(self) -> list[str]:
        """Names of the ``{name}`` placeholders of :attr:`url`, in order."""
        return _PLACEHOLDER.findall(self.url)


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
    # Left out of documents when unset, so tools of other types keep their digests.
    mcp: Annotated[McpToolRef | None, Field(exclude_if=lambda v: v is None)] = None
    """For ``mcp`` tools: the upstream server and tool, and the pinned digest
    (written by ``corral mcp sync``)."""
    http: Annotated[HttpToolSpec | None, Field(exclude_if=lambda v: v is None)] = None
    """For ``http`` tools: method, URL template, argument mapping, headers, SSRF allowlist."""
    rate_limit: Annotated[
        str | None, Field(min_length=1, max_length=200, exclude_if=lambda v: v is None)
    ] = None
    """Calls of this tool per tenant in ``limits`` notation (``"60/minute"``,
    ``"5/second;100/hour"``); ``None``: the gateway's ``rate_limit_per_tool``."""
    cache_ttl_seconds: Annotated[
        int | None, Field(ge=1, le=30 * 24 * 3600, exclude_if=lambda v: v is None)
    ] = None
    """Seconds a completed result stays in the tenant's tool-result cache; ``None`` (the
    default): results are not cached. Only for ``side_effect: read`` tools. A cached result is
    reused for the same tool version, canonical arguments and calling agent, after the call
    was decided by policy as usual."""

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is not None:
            import limits

            try:
                limits.parse_many(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate in limits notation, e.g. '60/minute' or "
                    "'5/second;100/hour'"
                ) from None
        return value

    @field_validator("input_schema")
    @classmethod
    def _schema_is_valid(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not (info.context and info.context.get("corral_schema_checked")):
            import jsonschema_rs  # imported by the first schema compiled, not by `import corral`

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
        if self.mcp is not None and self.type != "mcp":
            raise ValueError("'mcp' is only for type 'mcp'")
        if (self.http is not None) != (self.type == "http"):
            raise ValueError("type 'http' needs an 'http' section, and only it may have one")
        if self.http is not None:
            _http_arguments_exist(self.http, self.input_schema)
        if self.cache_ttl_seconds is not None and self.side_effect != "read":
            raise ValueError(
                f"'cache_ttl_seconds' is only for read-only tools (side_effect: read), not "
                f"side_effect: {self.side_effect}: a cached result would skip the effect; "
                "remove 'cache_ttl_seconds'"
            )
        return self


def _http_arguments_exist(http: HttpToolSpec, schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    for argument in http.parameters:
        if argument not in properties:
            raise ValueError(f"http.parameters names {argument!r}, not in input_schema.properties")
    mapped = {p.name or a for a, p in http.parameters.items() if p.location == "path"}
    for placeholder in http.placeholders():
        if placeholder not in mapped and placeholder not in properties:
            raise ValueError(
                f"URL placeholder {{{placeholder}}} matches no argument; add it to "
                "input_schema.properties (and 'required') or map one with 'in: path'"
            )


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


# A tool-name glob in an McpServer's allow/deny lists: fnmatch syntax over upstream names.
_GLOB = r"^[^\s]{1,128}$"


class McpServerTools(_Strict):
    """Which upstream tools ``corral mcp sync`` imports.

    Those matching a glob of ``allowed`` and none of ``denied`` (``fnmatch`` syntax over the
    upstream's tool names: ``git_*``).
    """

    allowed: list[Annotated[str, Field(pattern=_GLOB)]] = Field(default_factory=lambda: ["*"])
    denied: list[Annotated[str, Field(pattern=_GLOB)]] = Field(default_factory=list)

    def permits(self, tool_name: str) -> bool:
        """Whether the upstream tool ``tool_name`` matches ``allowed`` and no ``denied``."""
        return any(fnmatchcase(tool_name, g) for g in self.allowed) and not any(
            fnmatchcase(tool_name, g) for g in self.denied
        )


_SECRET_HINT = "values may reference secrets as ${secret:NAME}"


class McpServerSpec(_Strict):
    """How to reach an upstream MCP server, which of its tools to import, and timeouts.

    ``transport: stdio`` launches ``command`` with ``args`` (``env`` added to a minimal
    environment); ``transport: streamable_http`` posts to ``url`` with ``headers``. Values of
    ``env`` and ``headers`` may reference secrets (``Bearer ${secret:NAME}``); they are resolved
    by the credential broker when the session starts, never stored resolved.
    """

    description: Annotated[str, Field(min_length=1, max_length=2000)]
    transport: Literal["stdio", "streamable_http"]
    command: Annotated[str | None, Field(min_length=1)] = None
    """``stdio``: the executable (looked up on ``PATH``)."""
    args: list[str] = Field(default_factory=list)
    """``stdio``: its arguments."""
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = Field(
        default_factory=dict, description=f"``stdio``: extra environment; {_SECRET_HINT}."
    )
    cwd: str | None = None
    """``stdio``: working directory of the server process."""
    url: Annotated[str | None, Field(pattern=r"^https?://\S+$")] = None
    """``streamable_http``: the MCP endpoint (``https://host/mcp``)."""
    headers: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")], str] = Field(
        default_factory=dict, description=f"``streamable_http``: request headers; {_SECRET_HINT}."
    )
    tools: McpServerTools = McpServerTools()
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30
    """Seconds to start the server and complete the protocol handshake."""
    call_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60
    """Seconds one ``tools/call`` may take (the imported tools' ``timeout_seconds``)."""

    @model_validator(mode="after")
    def _fields_match_transport(self) -> McpServerSpec:
        stdio_only = {"command": self.command, "args": self.args, "env": self.env, "cwd": self.cwd}
        http_only = {"url": self.url, "headers": self.headers}
        if self.transport == "stdio":
            if self.command is None:
                raise ValueError("'command' is required when transport is 'stdio'")
            wrong = [k for k, v in http_only.items() if v]
        else:
            if self.url is None:
                raise ValueError("'url' is required when transport is 'streamable_http'")
            wrong = [k for k, v in stdio_only.items() if v]
        if wrong:
            raise ValueError(
                f"{', '.join(repr(w) for w in wrong)} not used with transport {self.transport!r}"
            )
        return self


class McpServer(_Strict):
    """An ``McpServer`` document: an upstream MCP server whose tools Corral imports."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["McpServer"] = "McpServer"
    metadata: Metadata
    spec: McpServerSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_SECRET_REFERENCE = r"^\$\{secret:[A-Za-z0-9][-_.A-Za-z0-9]{0,127}\}$"


class ModelCapabilities(_Strict):
    """What a deployment's model can do."""

    tool_calling: bool = True
    """Native tool calling (OpenAI ``tools=`` / Anthropic ``tool_use``)."""
    json_schema: bool = False
    """Output constrained by a JSON Schema (``response_format``)."""
    context_tokens: Annotated[int | None, Field(ge=1)] = None
    """Context window in tokens; ``None``: unknown."""


class ModelPrices(_Strict):
    """A deployment's price override, in US dollars per million tokens.

    Unset cache rates are priced at the input rate.
    """

    input_usd_per_mtok: Annotated[Decimal, Field(ge=0)]
    output_usd_per_mtok: Annotated[Decimal, Field(ge=0)]
    cache_read_usd_per_mtok: Annotated[Decimal | None, Field(ge=0)] = None
    cache_write_usd_per_mtok: Annotated[Decimal | None, Field(ge=0)] = None


class ModelDecoding(_Strict):
    """Decoding settings applied to every request sent to a deployment (unset: the request's)."""

    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    repeat_penalty: Annotated[float | None, Field(gt=0, le=3)] = None
    """llama.cpp's repetition penalty (1.0: none)."""
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    max_answer_chars: Annotated[int | None, Field(ge=1, le=1_000_000)] = None
    """Cap on a final answer's length, in characters."""


class ModelDeployment(_Strict):
    """One place a model alias can be served from."""

    provider: Annotated[str, Field(pattern=r"^[a-z0-9_-]+$")]
    """``openai`` (any OpenAI-compatible server), ``anthropic``, ``local`` (the embedded
    model) or another configured provider name."""
    model: Annotated[str, Field(min_length=1, max_length=200)]
    """The provider's model name (``gpt-4o-mini``, ``claude-sonnet-4-5``, ``smollm2-135m``)."""
    base_url: Annotated[str | None, Field(pattern=r"^https?://\S+$")] = None
    """The endpoint (``https://api.example.com/v1``); ``None``: the provider's configured one."""
    api_key: Annotated[str | None, Field(pattern=_SECRET_REFERENCE)] = None
    """A secret reference, ``${secret:NAME}``, resolved by the credential broker at call time;
    ``None``: the provider's configured key."""
    region: Annotated[str | None, Field(pattern=_NAME)] = None
    """Region label (``eu-west``) for region preference and data residency."""
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    """Share of traffic among healthy deployments of equal region preference."""
    capabilities: ModelCapabilities = ModelCapabilities()
    prices: ModelPrices | None = None
    """Overrides the price table for this deployment."""
    decoding: ModelDecoding | None = None
    timeout_seconds: Annotated[float | None, Field(gt=0, le=3600)] = None
    """Seconds one attempt may take; ``None``: the provider's setting."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of retryable errors (429, 5xx, timeouts, connection errors) before falling
    back to the next deployment."""


class ModelSpec(_Strict):
    """A model alias: ordered deployments, tried by region preference, weight and health."""

    description: Annotated[str, Field(min_length=1, max_length=2000)] = "A model alias."
    deployments: Annotated[list[ModelDeployment], Field(min_length=1, max_length=100)]


class Model(_Strict):
    """A ``Model`` document: ``metadata.name`` is the alias agents name (``default``, ``fast``)."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Model"] = "Model"
    metadata: Metadata
    spec: ModelSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PromptSpec(_Strict):
    """A versioned prompt: text agents use as their instructions (``instructions_ref``)."""

    description: Annotated[str, Field(min_length=1, max_length=2000)] = "A prompt."
    content: Annotated[str, Field(min_length=1, max_length=100_000)]
    """The prompt text, as the agent's system instructions."""


class Prompt(_Strict):
    """A ``Prompt`` document: each changed ``content`` is a new immutable, digested version."""

    api_version: Literal["corral.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Prompt"] = "Prompt"
    metadata: Metadata
    spec: PromptSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
