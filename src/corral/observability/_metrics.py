"""Prometheus metrics, in one registry of Corral's own (:data:`REGISTRY`), served at ``/metrics``.

Why a registry of our own, not the client's process-global default: ``/metrics`` then shows
exactly Corral's metrics (plus this process's ``process_*`` and ``python_*`` collectors) even when
Corral is embedded in a host application that registers its own, and nothing a library puts in
the default registry leaks out. The metrics are module-level (registered once per process), so
many :class:`~corral.platform.Platform` objects in one process (the tests) share them; tests read
deltas (:func:`sample_value` before and after), never absolute values.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): a counter's
exposed name ends in ``_total`` (the client appends it), durations are in seconds. The two model
metrics are the OpenTelemetry GenAI semantic conventions' client metrics
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/) translated to Prometheus
style as the OpenTelemetry-Prometheus compatibility spec does (dots -> underscores, the unit as
a suffix): ``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage``,
``gen_ai.client.operation.duration`` -> ``gen_ai_client_operation_duration_seconds``, and the
attributes ``gen_ai.provider.name`` / ``gen_ai.request.model`` / ``gen_ai.token.type`` ->
labels ``gen_ai_provider_name`` / ``gen_ai_request_model`` / ``gen_ai_token_type``; the bucket
boundaries are the ones the conventions advise.

Labels never carry tenant ids, run ids, principals, arguments or prompt text: only bounded,
operator-defined values (provider and model names from the model configuration, registered tool
names, statuses and reason classes). Hot paths record through :class:`_Children`, which binds a
label combination to its child once, so a recording is one dict lookup and one locked add.

Not multi-process aggregated: each process (API replica, worker) exposes its own numbers at its
own ``/metrics``; scrape every process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Final, Generic, Literal, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "APPROVAL_WAIT",
    "CACHE_HITS",
    "CACHE_HIT_ATTRIBUTE",
    "CACHE_MISSES",
    "CONTENT_TYPE",
    "MODEL_COST",
    "MODEL_DURATION",
    "REGISTRY",
    "RUNS_FINISHED",
    "RUNS_IN_FLIGHT",
    "TOKEN_USAGE",
    "TOOL_CALLS",
    "CacheKind",
    "ModelOutcome",
    "TokenCounts",
    "count_cache_lookup",
    "count_model_cost",
    "count_run_finished",
    "count_tool_call",
    "exposition",
    "observe_approval_wait",
    "observe_model_call",
    "reason_class",
    "sample_value",
]

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""Corral's metrics (see the module docstring for why not the client's default registry)."""
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
"""Content type of :func:`exposition` (the Prometheus text format)."""

CACHE_HIT_ATTRIBUTE = "corral.cache.hit"
"""Span attribute: ``True`` when a ``chat`` or ``execute_tool`` span was answered from a cache,
``False`` when a cache was consulted (or, on ``chat`` spans, could have been) and the model or
tool was called."""

CacheKind = Literal["model", "tool"]
"""Which cache a lookup was made in: the model response cache or the tool-result cache."""

ModelOutcome = Literal["ok", "error"]
"""How one provider call ended: ``ok`` (it answered) or ``error`` (it failed or timed out)."""


class TokenCounts(Protocol):
    """Token counts of one model call (``corral.gateway.models.Usage`` has them)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...


_PROVIDER: Final = "gen_ai_provider_name"
_MODEL: Final = "gen_ai_request_model"

# Advised by the GenAI semantic conventions for gen_ai.client.token.usage and
# gen_ai.client.operation.duration.
_TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
_DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
# Approvals wait for people: a minute to a week.
_APPROVAL_BUCKETS: Final = (60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400)

CACHE_HITS = Counter(
    "corral_cache_hits",
    "Lookups answered from a cache (no model or tool call was made).",
    ["kind"],
    registry=REGISTRY,
)
"""``corral_cache_hits_total{kind="model"|"tool"}``."""

CACHE_MISSES = Counter(
    "corral_cache_misses",
    "Cache lookups that found no live entry (the model or tool was called).",
    ["kind"],
    registry=REGISTRY,
)
"""``corral_cache_misses_total{kind="model"|"tool"}``."""

TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per model call, by token type (OpenTelemetry gen_ai.client.token.usage). "
    "cache_read is a subset of input and reasoning a subset of output; both are observed only "
    "for calls that reported some.",
    [_PROVIDER, _MODEL, "gen_ai_token_type"],
    buckets=_TOKEN_BUCKETS,
    registry=REGISTRY,
)
"""``gen_ai_client_token_usage{gen_ai_provider_name, gen_ai_request_model, gen_ai_token_type=
"input"|"output"|"cache_read"|"reasoning"}``: one observation per provider call and type."""

MODEL_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Seconds per provider call, retries counted separately (OpenTelemetry "
    "gen_ai.client.operation.duration).",
    [_PROVIDER, _MODEL, "outcome"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
"""``gen_ai_client_operation_duration_seconds{gen_ai_provider_name, gen_ai_request_model,
outcome="ok"|"error"}``."""

MODEL_COST = Counter(
    "corral_model_cost_usd",
    "US dollars charged for model calls (the cost ledger's figure, recorded when the ledger row "
    "commits; a float approximation of the ledger's Decimal).",
    [_PROVIDER, _MODEL],
    registry=REGISTRY,
)
"""``corral_model_cost_usd_total{gen_ai_provider_name, gen_ai_request_model}``."""

RUNS_FINISHED = Counter(
    "corral_runs_finished",
    "Runs that reached a terminal status, by status and reason class (the terminal_reason "
    "before any ':').",
    ["status", "reason"],
    registry=REGISTRY,
)
"""``corral_runs_finished_total{status="SUCCEEDED"|..., reason="final_answer"|"quota"|...}``."""

RUNS_IN_FLIGHT = Gauge(
    "corral_runs_in_flight",
    "Runs this process's worker is driving now.",
    registry=REGISTRY,
)
"""``corral_runs_in_flight``: one process's count."""

TOOL_CALLS = Counter(
    "corral_tool_calls",
    "Tool calls through the governed pipeline, by tool, policy decision and outcome.",
    ["tool", "decision", "outcome"],
    registry=REGISTRY,
)
"""``corral_tool_calls_total{tool, decision="allow"|"deny"|"require_approval"|"none",
outcome="completed"|"failed"|"denied"|"approval_required"|"stopped"}``; ``tool`` is
``_unknown`` for a name no registered tool offered to the caller has (a model's invention)."""

APPROVAL_WAIT = Histogram(
    "corral_approval_wait_seconds",
    "Seconds from an approval request to its final decision, by outcome.",
    ["outcome"],
    buckets=_APPROVAL_BUCKETS,
    registry=REGISTRY,
)
"""``corral_approval_wait_seconds{outcome="approved"|"rejected"|"expired"}``."""

UNKNOWN_TOOL: Final = "_unknown"

C = TypeVar("C")


class _Children(Generic[C]):
    """Label children of one metric, each bound once (no lookup in the client's locked table)."""

    def __init__(self, bind: Callable[..., C]) -> None:
        self._bind = bind
        self._children: dict[tuple[str, ...], C] = {}

    def get(self, *labels: str) -> C:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._bind(*labels)
        return child


_TOKENS: Final = _Children(TOKEN_USAGE.labels)
_DURATIONS: Final = _Children(MODEL_DURATION.labels)
_COSTS: Final = _Children(MODEL_COST.labels)
_RUNS: Final = _Children(RUNS_FINISHED.labels)
_TOOLS: Final = _Children(TOOL_CALLS.labels)
_WAITS: Final = _Children(APPROVAL_WAIT.labels)
_CACHE: Final = {
    ("model", True): CACHE_HITS.labels("model"),
    ("model", False): CACHE_MISSES.labels("model"),
    ("tool", True): CACHE_HITS.labels("tool"),
    ("tool", False): CACHE_MISSES.labels("tool"),
}

_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")


def count_cache_lookup(kind: CacheKind, *, hit: bool) -> None:
    """Count one lookup in the ``kind`` cache as a hit or a miss."""
    _CACHE[kind, hit].inc()


def observe_model_call(
    provider: str, model: str, seconds: float, *, usage: TokenCounts | None = None
) -> None:
    """Record one provider call: its duration, and its tokens when it answered.

    Args:
        provider: The deployment's provider (``openai``, ``local``...).
        model: The provider's model name.
        seconds: Wall-clock seconds of the call.
        usage: The call's token counts; ``None`` when it failed (outcome ``error``).
    """
    _DURATIONS.get(provider, model, "error" if usage is None else "ok").observe(seconds)
    if usage is None:
        return
    _TOKENS.get(provider, model, "input").observe(usage.input_tokens)
    _TOKENS.get(provider, model, "output").observe(usage.output_tokens)
    if usage.cache_read_tokens:
        _TOKENS.get(provider, model, "cache_read").observe(usage.cache_read_tokens)
    if usage.reasoning_tokens:
        _TOKENS.get(provider, model, "reasoning").observe(usage.reasoning_tokens)


def count_model_cost(provider: str, model: str, cost_usd: Decimal | None) -> None:
    """Add a model call's cost (nothing when it was not priced or cost nothing)."""
    if cost_usd:
        _COSTS.get(provider, model).inc(float(cost_usd))


def reason_class(terminal_reason: str | None) -> str:
    """The bounded class of a run's ``terminal_reason``: ``quota:cost_per_day`` -> ``quota``.

    Anything that is not a short lowercase identifier becomes ``other`` (a label must never
    carry free text).
    """
    head = (terminal_reason or "").partition(":")[0]
    return head if _REASON.fullmatch(head) else "other"


def count_run_finished(status: str, terminal_reason: str | None) -> None:
    """Count a run that reached terminal ``status`` (after its final checkpoint committed)."""
    _RUNS.get(status, reason_class(terminal_reason)).inc()


def count_tool_call(tool: str | None, decision: str | None, outcome: str) -> None:
    """Count one governed tool call.

    Args:
        tool: The registered tool's name; ``None`` when no offered tool has the name called.
        decision: The ``tool.call`` decision (``allow``, ``deny``, ``require_approval``);
            ``None`` when policy was not asked (refused or invalid before the decision).
        outcome: The call's status (``COMPLETED``, ``DENIED``...), lowercased in the label.
    """
    _TOOLS.get(tool or UNKNOWN_TOOL, decision or "none", outcome.lower()).inc()


def observe_approval_wait(outcome: str, seconds: float) -> None:
    """Record the wait of an approval request that was just decided for good."""
    _WAITS.get(outcome).observe(max(seconds, 0.0))


def exposition() -> bytes:
    """Every metric of :data:`REGISTRY` in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)


def sample_value(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample of :data:`REGISTRY` (``0.0`` when absent); for tests.

    Args:
        name: The sample's exposed name (``corral_tool_calls_total``,
            ``gen_ai_client_operation_duration_seconds_count``...).
        labels: The sample's labels, all of them.
    """
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
