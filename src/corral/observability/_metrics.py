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

Multi-process mode. Without ``PROMETHEUS_MULTIPROC_DIR`` each process (API replica, worker)
exposes its own numbers at its own ``/metrics``: scrape every process. With
``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory shared by every Corral process of one host
(set before Python starts, the same for all; emptied at each deployment), prometheus_client's
multiprocess mode writes each process's values to memory-mapped files there and any process's
``/metrics`` serves their sum (gauges: ``corral_runs_in_flight`` summed over live processes,
``corral_run_queue_depth`` the most recent value; a process that exits normally drops its
live gauges, one killed leaves them until the directory is emptied). In that mode the
``process_*`` / ``python_*`` collectors are left out (they would describe only the scraping
process), exemplars are not recorded (the client does not support them there), and the breaker
gauge shows the scraping process's breakers.

Exemplars. Histograms of durations and the tool-call counter carry the current trace id as an
exemplar (``trace_id``); they appear only in the OpenMetrics exposition, which ``/metrics``
serves when the scraper asks for it (``Accept: application/openmetrics-text``; Prometheus does
when exemplar storage is enabled).
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Final, Generic, Literal, Protocol, TypeVar

from opentelemetry import trace
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from corral.observability._exposition import negotiated, text_exposition

__all__ = [
    "AGENT_RUNS_FINISHED",
    "APPROVAL_WAIT",
    "BREAKER_STATES",
    "CACHE_HITS",
    "CACHE_HIT_ATTRIBUTE",
    "CACHE_MISSES",
    "CONTENT_TYPE",
    "LEASE_RECLAIMS",
    "MODEL_COST",
    "MODEL_DURATION",
    "MULTIPROCESS",
    "QUEUE_DEPTH",
    "REGISTRY",
    "RUNS_FINISHED",
    "RUNS_IN_FLIGHT",
    "STEP_DURATION",
    "TOKEN_USAGE",
    "TOOL_CALLS",
    "BreakerSource",
    "CacheKind",
    "ModelOutcome",
    "TokenCounts",
    "count_cache_lookup",
    "count_lease_reclaims",
    "count_model_cost",
    "count_run_finished",
    "count_tool_call",
    "exposition",
    "negotiated_exposition",
    "observe_approval_wait",
    "observe_model_call",
    "observe_step",
    "reason_class",
    "register_breakers",
    "sample_value",
    "set_queue_depth",
]

MULTIPROCESS: Final = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Whether prometheus_client's multiprocess mode is on (read once, as the client does)."""

if MULTIPROCESS:
    # A process that exits leaves its files; its live gauges (runs in flight) must not count.
    atexit.register(mark_process_dead, os.getpid())

REGISTRY: Final = CollectorRegistry(auto_describe=True)
"""Corral's metrics (see the module docstring for why not the client's default registry)."""
if not MULTIPROCESS:
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
    "Runs this process's worker is driving now (summed over live processes in multiprocess mode).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
"""``corral_runs_in_flight``: one process's count (the live processes' sum in multiprocess mode)."""

AGENT_RUNS_FINISHED = Counter(
    "corral_agent_runs_finished",
    "Runs that reached a terminal status, by agent name and status (agent _unknown: a run "
    "ended REJECTED by its approval's refusal or expiry, counted where the agent is not read).",
    ["agent", "status"],
    registry=REGISTRY,
)
"""``corral_agent_runs_finished_total{agent, status}``."""

STEP_DURATION = Histogram(
    "corral_run_step_duration_seconds",
    "Seconds per checkpointed run step (model call, tool calls and checkpoint write), by agent.",
    ["agent"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
"""``corral_run_step_duration_seconds{agent}``; exemplar: the run's trace id."""

LEASE_RECLAIMS = Counter(
    "corral_lease_reclaims",
    "Runs claimed while RUNNING under another lease that had expired (a worker died or stalled).",
    registry=REGISTRY,
)
"""``corral_lease_reclaims_total``."""

QUEUE_DEPTH = Gauge(
    "corral_run_queue_depth",
    "Runs waiting for a worker (status QUEUED, every tenant), counted at scrape time.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
"""``corral_run_queue_depth``: set by the ``/metrics`` route before each exposition."""

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
UNKNOWN_AGENT: Final = "_unknown"

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
_AGENT_RUNS: Final = _Children(AGENT_RUNS_FINISHED.labels)
_STEPS: Final = _Children(STEP_DURATION.labels)
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
    _DURATIONS.get(provider, model, "error" if usage is None else "ok").observe(
        seconds, _current_exemplar()
    )
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


def count_run_finished(
    status: str, terminal_reason: str | None, *, agent: str | None = None
) -> None:
    """Count a run that reached terminal ``status`` (after its final checkpoint committed).

    Args:
        status: The terminal status (``SUCCEEDED``...).
        terminal_reason: The run's ``terminal_reason`` (its class is the label).
        agent: The run's agent name; ``None`` when the caller does not know it (``_unknown``).
    """
    _RUNS.get(status, reason_class(terminal_reason)).inc()
    _AGENT_RUNS.get(agent or UNKNOWN_AGENT, status).inc()


def observe_step(agent: str, seconds: float, *, trace_id: str | None = None) -> None:
    """Record one run step's wall-clock seconds, with the run's trace id as exemplar."""
    _STEPS.get(agent).observe(max(seconds, 0.0), _exemplar(trace_id))


def count_lease_reclaims(count: int) -> None:
    """Count runs a worker claimed from an expired lease of another (or its own past) claim."""
    if count:
        LEASE_RECLAIMS.inc(count)


def set_queue_depth(queued: int) -> None:
    """Set :data:`QUEUE_DEPTH` to the number of ``QUEUED`` runs just counted."""
    QUEUE_DEPTH.set(queued)


def count_tool_call(tool: str | None, decision: str | None, outcome: str) -> None:
    """Count one governed tool call.

    Args:
        tool: The registered tool's name; ``None`` when no offered tool has the name called.
        decision: The ``tool.call`` decision (``allow``, ``deny``, ``require_approval``);
            ``None`` when policy was not asked (refused or invalid before the decision).
        outcome: The call's status (``COMPLETED``, ``DENIED``...), lowercased in the label.
    """
    _TOOLS.get(tool or UNKNOWN_TOOL, decision or "none", outcome.lower()).inc(
        1, _current_exemplar()
    )


def observe_approval_wait(outcome: str, seconds: float) -> None:
    """Record the wait of an approval request that was just decided for good."""
    _WAITS.get(outcome).observe(max(seconds, 0.0))


def _exemplar(trace_id: str | None) -> dict[str, str] | None:
    """An exemplar naming ``trace_id``; ``None`` without one or in multiprocess mode."""
    if trace_id is None or MULTIPROCESS:
        return None
    return {"trace_id": trace_id}


def _current_exemplar() -> dict[str, str] | None:
    """An exemplar naming the current OpenTelemetry span's trace, if a span is recording."""
    if MULTIPROCESS:
        return None
    context = trace.get_current_span().get_span_context()
    return {"trace_id": format(context.trace_id, "032x")} if context.is_valid else None


BreakerSource = Callable[[], Iterable[tuple[str, str, str]]]
"""Yields ``(kind, name, state)`` of each circuit breaker a gateway holds now."""

BREAKER_STATES: Final = ("closed", "open", "half_open")
_BREAKER_SOURCES: dict[int, BreakerSource] = {}


class _BreakerCollector(Collector):
    """``corral_circuit_breaker_state{kind, name, state}``, read at scrape time.

    1 for each breaker's state, 0 for the others, from the registered sources (breakers live
    in each gateway's memory).
    """

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "corral_circuit_breaker_state",
            "Circuit breakers of this process by kind (model deployment or tool upstream), "
            "name and state: 1 for the state it is in, 0 for the others.",
            labels=["kind", "name", "state"],
        )
        seen: set[tuple[str, str]] = set()
        for source in list(_BREAKER_SOURCES.values()):
            for kind, name, state in source():
                if (kind, name) in seen:
                    continue
                seen.add((kind, name))
                for candidate in BREAKER_STATES:
                    family.add_metric([kind, name, candidate], 1.0 if candidate == state else 0.0)
        yield family


_BREAKERS: Final = _BreakerCollector()
REGISTRY.register(_BREAKERS)


def register_breakers(source: BreakerSource) -> Callable[[], None]:
    """Show ``source``'s breakers in :data:`REGISTRY`; returns the function that stops it.

    A platform registers its gateways' breakers when it starts and unregisters at close.
    """
    key = id(source)
    _BREAKER_SOURCES[key] = source

    def unregister() -> None:
        _BREAKER_SOURCES.pop(key, None)

    return unregister


def _scrape_registry() -> CollectorRegistry:
    """:data:`REGISTRY`, or in multiprocess mode one summing every process's files."""
    if not MULTIPROCESS:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_BREAKERS)
    return registry


def exposition() -> bytes:
    """Every metric of :data:`REGISTRY` in the Prometheus text format (:data:`CONTENT_TYPE`).

    In multiprocess mode (see the module docstring), every Corral process's values summed.
    """
    return text_exposition(_scrape_registry())


def negotiated_exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format an ``Accept`` header asks for, and its content type.

    OpenMetrics (with exemplars) when ``accept`` names ``application/openmetrics-text``;
    otherwise the Prometheus text format (prometheus_client's ``choose_encoder`` decides, with
    the version and name escaping asked for).
    """
    return negotiated(_scrape_registry(), accept or "")


def sample_value(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample of :data:`REGISTRY` (``0.0`` when absent); for tests.

    Args:
        name: The sample's exposed name (``corral_tool_calls_total``,
            ``gen_ai_client_operation_duration_seconds_count``...).
        labels: The sample's labels, all of them.
    """
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
