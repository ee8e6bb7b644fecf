"""Evidence: OpenTelemetry spans with the GenAI semantic conventions, stored by Corral."""

from corral.observability._metrics import (
    CACHE_HIT_ATTRIBUTE,
    CACHE_HITS,
    CACHE_MISSES,
    CacheKind,
    count_cache_lookup,
)
from corral.observability._tables import SpanRow
from corral.observability._tracing import RUN_ID_ATTRIBUTE, StoreSpanExporter, Tracing, new_trace_id

__all__ = [
    "CACHE_HITS",
    "CACHE_HIT_ATTRIBUTE",
    "CACHE_MISSES",
    "RUN_ID_ATTRIBUTE",
    "CacheKind",
    "SpanRow",
    "StoreSpanExporter",
    "Tracing",
    "count_cache_lookup",
    "new_trace_id",
]
