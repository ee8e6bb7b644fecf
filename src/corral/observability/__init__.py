"""Evidence: spans (OpenTelemetry GenAI), Prometheus and OTLP metrics, JSON logs, readiness.

:class:`OtlpMetricExporter` and :func:`metrics_request` are imported on first use (protobuf and
httpx, which a process that exports no metrics over OTLP never needs).
"""

from typing import TYPE_CHECKING, Any

from corral.observability._health import (
    Check,
    CheckStatus,
    Probe,
    Readiness,
    RedisClients,
    check_disk,
    check_redis,
    check_store,
    run_probes,
)
from corral.observability._logging import (
    LOG_CONTEXT_KEYS,
    bind_log_context,
    bind_log_values,
    configure_logging,
    get_logger,
    redact_event,
)
from corral.observability._metrics import (
    AGENT_RUNS_FINISHED,
    APPROVAL_WAIT,
    BREAKER_STATES,
    CACHE_HIT_ATTRIBUTE,
    CACHE_HITS,
    CACHE_MISSES,
    CONTENT_TYPE,
    LEASE_RECLAIMS,
    MODEL_COST,
    MODEL_DURATION,
    MULTIPROCESS,
    QUEUE_DEPTH,
    REGISTRY,
    RUNS_FINISHED,
    RUNS_IN_FLIGHT,
    STEP_DURATION,
    TOKEN_USAGE,
    TOOL_CALLS,
    BreakerSource,
    CacheKind,
    ModelOutcome,
    TokenCounts,
    count_cache_lookup,
    count_lease_reclaims,
    count_model_cost,
    count_run_finished,
    count_tool_call,
    exposition,
    negotiated_exposition,
    observe_approval_wait,
    observe_model_call,
    observe_step,
    reason_class,
    register_breakers,
    sample_value,
    set_queue_depth,
)
from corral.observability._tables import SpanRow
from corral.observability._tracing import (
    OTLP_ENDPOINT_VARIABLES,
    OTLP_METRICS_ENDPOINT_VARIABLES,
    RUN_ID_ATTRIBUTE,
    StoreSpanExporter,
    Tracing,
    new_trace_id,
    otlp_configured,
    otlp_metric_exporter,
    otlp_metrics_configured,
    record_child_span,
)

__all__ = [
    "AGENT_RUNS_FINISHED",
    "APPROVAL_WAIT",
    "BREAKER_STATES",
    "CACHE_HITS",
    "CACHE_HIT_ATTRIBUTE",
    "CACHE_MISSES",
    "CONTENT_TYPE",
    "LEASE_RECLAIMS",
    "LOG_CONTEXT_KEYS",
    "MODEL_COST",
    "MODEL_DURATION",
    "MULTIPROCESS",
    "OTLP_ENDPOINT_VARIABLES",
    "OTLP_METRICS_ENDPOINT_VARIABLES",
    "QUEUE_DEPTH",
    "REGISTRY",
    "RUNS_FINISHED",
    "RUNS_IN_FLIGHT",
    "RUN_ID_ATTRIBUTE",
    "STEP_DURATION",
    "TOKEN_USAGE",
    "TOOL_CALLS",
    "BreakerSource",
    "CacheKind",
    "Check",
    "CheckStatus",
    "ModelOutcome",
    "OtlpMetricExporter",
    "Probe",
    "Readiness",
    "RedisClients",
    "SpanRow",
    "StoreSpanExporter",
    "TokenCounts",
    "Tracing",
    "bind_log_context",
    "bind_log_values",
    "check_disk",
    "check_redis",
    "check_store",
    "configure_logging",
    "count_cache_lookup",
    "count_lease_reclaims",
    "count_model_cost",
    "count_run_finished",
    "count_tool_call",
    "exposition",
    "get_logger",
    "metrics_request",
    "negotiated_exposition",
    "new_trace_id",
    "observe_approval_wait",
    "observe_model_call",
    "observe_step",
    "otlp_configured",
    "otlp_metric_exporter",
    "otlp_metrics_configured",
    "reason_class",
    "record_child_span",
    "redact_event",
    "register_breakers",
    "run_probes",
    "sample_value",
    "set_queue_depth",
]


if TYPE_CHECKING:
    from corral.observability._otlp_metrics import OtlpMetricExporter, metrics_request


def __getattr__(name: str) -> Any:
    """Import the OTLP metric exporter when first asked for (PEP 562)."""
    if name in ("OtlpMetricExporter", "metrics_request"):
        from corral.observability import _otlp_metrics

        return getattr(_otlp_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
