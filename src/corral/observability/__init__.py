"""Evidence: OpenTelemetry spans with the GenAI semantic conventions, stored by Corral."""

from corral.observability._tables import SpanRow
from corral.observability._tracing import RUN_ID_ATTRIBUTE, StoreSpanExporter, Tracing, new_trace_id

__all__ = [
    "RUN_ID_ATTRIBUTE",
    "SpanRow",
    "StoreSpanExporter",
    "Tracing",
    "new_trace_id",
]
