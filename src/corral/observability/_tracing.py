"""OpenTelemetry tracing, exported into Corral's own store.

Spans follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/): ``invoke_agent {agent}``,
``chat {model}`` and ``execute_tool {tool}`` with ``gen_ai.*`` attributes.

Finished spans wait in :class:`StoreSpanExporter` until the runtime drains them into the same
transaction as the step that produced them, so a step's checkpoint, audit events and spans
commit (or vanish) together.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Tracer

__all__ = ["RUN_ID_ATTRIBUTE", "StoreSpanExporter", "Tracing", "new_trace_id"]

RUN_ID_ATTRIBUTE = "corral.run.id"
"""Span attribute naming the run a span belongs to."""

_TRACE_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "corral_trace_id", default=None
)


def new_trace_id() -> str:
    """A random, non-zero W3C trace id: 32 lowercase hex digits."""
    while True:
        value = secrets.token_hex(16)
        if int(value, 16):
            return value


class _RunTraceIds(RandomIdGenerator):
    """Root spans take the run's trace id, so a run resumed elsewhere stays one trace."""

    def generate_trace_id(self) -> int:
        chosen = _TRACE_ID.get()
        return chosen if chosen is not None else super().generate_trace_id()


def _time(nanoseconds: int | None) -> datetime:
    return datetime.fromtimestamp((nanoseconds or 0) / 1e9, tz=UTC)


def _attribute(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class StoreSpanExporter(SpanExporter):
    """Holds finished spans, by trace id, until :meth:`drain` hands them to a transaction."""

    def __init__(self) -> None:
        self._pending: dict[str, list[ReadableSpan]] = defaultdict(list)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Keep the spans until drained."""
        with self._lock:
            for span in spans:
                if span.context is not None:
                    self._pending[format(span.context.trace_id, "032x")].append(span)
        return SpanExportResult.SUCCESS

    def drain(self, trace_id: str, *, tenant_id: str, run_id: str | None) -> list[dict[str, Any]]:
        """Remove and return the finished spans of ``trace_id`` as rows of the ``spans`` table."""
        with self._lock:
            spans = self._pending.pop(trace_id, [])
        rows = []
        for span in spans:
            assert span.context is not None
            attributes = {key: _attribute(value) for key, value in (span.attributes or {}).items()}
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "span_id": format(span.context.span_id, "016x"),
                    "trace_id": trace_id,
                    "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
                    "run_id": attributes.get(RUN_ID_ATTRIBUTE, run_id),
                    "name": span.name,
                    "kind": span.kind.name,
                    "status": span.status.status_code.name,
                    "start_time": _time(span.start_time),
                    "end_time": _time(span.end_time),
                    "attributes": attributes,
                }
            )
        return rows

    def discard(self, trace_id: str) -> None:
        """Forget the pending spans of a trace (its transaction failed)."""
        with self._lock:
            self._pending.pop(trace_id, None)

    def shutdown(self) -> None:
        """Drop everything pending."""
        with self._lock:
            self._pending.clear()


class _HandOver(SpanProcessor):
    """Hands each finished, sampled span to the exporter at once.

    What ``SimpleSpanProcessor`` does, without its per-span export lock and the context it
    attaches to suppress instrumentation during the export (the exporter only appends the span
    to a list): about a fifth of the cost of a span.
    """

    def __init__(self, exporter: StoreSpanExporter) -> None:
        self._exporter = exporter

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self._exporter.export((span,))


class Tracing:
    """A tracer provider of Corral's own (the global one is left to the host application)."""

    def __init__(self, *, service_name: str = "corral") -> None:
        self.exporter = StoreSpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            id_generator=_RunTraceIds(),
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(_HandOver(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("corral")

    @staticmethod
    @contextlib.contextmanager
    def trace(trace_id: str) -> Iterator[None]:
        """Root spans started inside this block belong to trace ``trace_id``."""
        token = _TRACE_ID.set(int(trace_id, 16))
        try:
            yield
        finally:
            _TRACE_ID.reset(token)

    def shutdown(self) -> None:
        """Stop the provider."""
        self.provider.shutdown()
