"""OpenTelemetry tracing, exported into Corral's own store.

Spans follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/): ``invoke_agent {agent}``,
``chat {model}`` and ``execute_tool {tool}`` with ``gen_ai.*`` attributes.

Finished spans wait in :class:`StoreSpanExporter` until the runtime drains them into the same
transaction as the step that produced them, so a step's checkpoint, audit events and spans
commit (or vanish) together.

When the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
variable is set, every span is also sent to that OTLP/HTTP collector (protobuf encoding; the
exporter reads ``OTEL_EXPORTER_OTLP_*_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION`` and
``_CERTIFICATE`` itself) through a batch processor: a background thread exports, so no step
waits on the network. :meth:`Tracing.shutdown` (``Platform.close``) flushes what is queued.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, Tracer

if TYPE_CHECKING:
    from corral.observability._otlp_metrics import OtlpMetricExporter

__all__ = [
    "OTLP_ENDPOINT_VARIABLES",
    "OTLP_METRICS_ENDPOINT_VARIABLES",
    "RUN_ID_ATTRIBUTE",
    "StoreSpanExporter",
    "Tracing",
    "new_trace_id",
    "otlp_configured",
    "otlp_metric_exporter",
    "otlp_metrics_configured",
    "record_child_span",
]

log = logging.getLogger(__name__)

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
"""Either of these (OpenTelemetry's standard variables) turns OTLP span export on."""
OTLP_METRICS_ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
"""Either of these (OpenTelemetry's standard variables) turns OTLP metric export on."""
_PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_SUPPORTED_PROTOCOL = "http/protobuf"

RUN_ID_ATTRIBUTE = "corral.run.id"
"""Span attribute naming the run a span belongs to."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    return _EPOCH + timedelta(microseconds=(nanoseconds or 0) // 1000)


def _nanoseconds(moment: datetime) -> int:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1) * 1000


def _attribute(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def record_child_span(tracer: Tracer, name: str, start_ns: int, attributes: dict[str, Any]) -> None:
    """Record a finished child span of the current span, ending now; nothing if none records.

    For leaf spans on the hot path (``context.build``, ``policy.evaluate``: one per step or
    decision): with the SDK's tracer the span is built finished, as the ``ReadableSpan`` the
    span processors receive (the store's exporter, OTLP), without the live ``Span`` object,
    its lock and its attribute validation: about a third of the cost of
    ``start_span(...).end()``. So ``attributes`` must already be valid OpenTelemetry values
    (str, bool, int, float or lists of one of them) and is not copied. The span follows its
    parent's sampling decision (the SDK's default ``ParentBased`` sampler); other tracers
    (a no-op tracer) get an ordinary ``start_span(...).end()``.

    Args:
        tracer: The tracer the span belongs to.
        name: Span name.
        start_ns: When it started, nanoseconds since the epoch.
        attributes: Its attributes.
    """
    parent = trace.get_current_span()
    if not parent.is_recording():
        return
    if not isinstance(tracer, SdkTracer):
        tracer.start_span(name, start_time=start_ns, attributes=attributes).end()
        return
    parent_context = parent.get_span_context()
    context = SpanContext(
        parent_context.trace_id,
        tracer.id_generator.generate_span_id(),
        is_remote=False,
        trace_flags=parent_context.trace_flags,
        trace_state=parent_context.trace_state,
    )
    tracer.span_processor.on_end(
        ReadableSpan(
            name,
            context,
            parent_context,
            tracer.resource,
            attributes,
            start_time=start_ns,
            end_time=time.time_ns(),
            instrumentation_scope=_scope(tracer),
        )
    )


_SCOPES: dict[tuple[str, str | None, str | None], InstrumentationScope] = {}


def _scope(tracer: SdkTracer) -> InstrumentationScope:
    info = tracer.instrumentation_info
    key = (info.name, info.version, info.schema_url)
    scope = _SCOPES.get(key)
    if scope is None:
        scope = _SCOPES[key] = InstrumentationScope(*key)
    return scope


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
        return _rows(spans, trace_id, tenant_id, run_id)

    def take(
        self, trace_id: str, span_id: int, *, tenant_id: str, run_id: str | None
    ) -> list[dict[str, Any]]:
        """Remove and return one finished span of ``trace_id`` (its row; none if not pending)."""
        with self._lock:
            pending = self._pending.get(trace_id, [])
            taken = [s for s in pending if s.context is not None and s.context.span_id == span_id]
            rest = [s for s in pending if s not in taken]
            if rest:
                self._pending[trace_id] = rest
            else:
                self._pending.pop(trace_id, None)
        return _rows(taken, trace_id, tenant_id, run_id)

    def discard(self, trace_id: str) -> None:
        """Forget the pending spans of a trace (its transaction failed)."""
        with self._lock:
            self._pending.pop(trace_id, None)

    def shutdown(self) -> None:
        """Drop everything pending."""
        with self._lock:
            self._pending.clear()


def _rows(
    spans: list[ReadableSpan], trace_id: str, tenant_id: str, run_id: str | None
) -> list[dict[str, Any]]:
    """Rows of the ``spans`` table."""
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


def otlp_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for OTLP span export (an endpoint variable is set).

    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off again.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in OTLP_ENDPOINT_VARIABLES)


def otlp_metrics_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for OTLP metric export (an endpoint variable is set).

    ``OTEL_SDK_DISABLED=true`` or ``OTEL_METRICS_EXPORTER=none`` turn it off again.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in OTLP_METRICS_ENDPOINT_VARIABLES)


def otlp_metric_exporter(
    resource: Resource, environ: Mapping[str, str] | None = None
) -> OtlpMetricExporter | None:
    """An exporter of :data:`~corral.observability.REGISTRY`, or ``None`` if not configured.

    The exporter (protobuf, httpx) is imported only when configured.

    Args:
        resource: The resource of the metrics (the spans' one: ``Tracing.provider.resource``).
        environ: The variables read (default ``os.environ``; see :func:`otlp_metrics_configured`).
    """
    if not otlp_metrics_configured(environ):
        return None
    from corral.observability._otlp_metrics import OtlpMetricExporter

    return OtlpMetricExporter(resource=resource, environ=environ)


def _otlp_processor(environ: Mapping[str, str]) -> SpanProcessor | None:
    """A batch processor exporting to the configured OTLP/HTTP endpoint, or ``None``."""
    if not otlp_configured(environ):
        return None
    protocol = next(
        (environ[name].strip() for name in _PROTOCOL_VARIABLES if environ.get(name, "").strip()),
        _SUPPORTED_PROTOCOL,
    )
    if protocol != _SUPPORTED_PROTOCOL:
        log.warning(
            "OTLP protocol %r is not supported; spans are exported with %r instead (set "
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and point the endpoint at the "
            "collector's OTLP/HTTP port, usually 4318)",
            protocol,
            _SUPPORTED_PROTOCOL,
        )
    # Imported only when configured: the exporter brings protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


class Tracing:
    """A tracer provider of Corral's own (the global one is left to the host application).

    Args:
        service_name: ``service.name`` of the spans, unless ``OTEL_SERVICE_NAME`` names it.

    The ``OTEL_*`` variables are read from the process environment when it is built.
    """

    def __init__(self, *, service_name: str = "corral") -> None:
        env = os.environ
        self.exporter = StoreSpanExporter()
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the service name given wins over them.
        name = env.get("OTEL_SERVICE_NAME", "").strip() or service_name
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": name}),
            id_generator=_RunTraceIds(),
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(_HandOver(self.exporter))
        self.otlp = _otlp_processor(env)
        """The OTLP batch processor when export is configured (:func:`otlp_configured`)."""
        if self.otlp is not None:
            self.provider.add_span_processor(self.otlp)
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

    def record(
        self,
        name: str,
        *,
        trace_id: str,
        start: datetime,
        end: datetime,
        attributes: Mapping[str, Any],
        tenant_id: str,
        run_id: str | None,
    ) -> list[dict[str, Any]]:
        """Record a span that already happened (``approval.wait``) as a root span of a trace.

        It is exported like any other span (OTLP included); its row is returned for the
        caller's transaction rather than left for a later drain.

        Args:
            name: Span name.
            trace_id: The trace it belongs to (32 hex digits).
            start: When it started (a naive time is taken as UTC).
            end: When it ended.
            attributes: Its attributes.
            tenant_id: Tenant of the row.
            run_id: Run of the row (``corral.run.id`` in ``attributes`` wins).

        Returns:
            The span's row for the ``spans`` table (one, or none if it was not sampled).
        """
        with self.trace(trace_id):
            span = self.tracer.start_span(
                name, context=Context(), start_time=_nanoseconds(start), attributes=attributes
            )
        span.end(end_time=_nanoseconds(end))
        span_id = span.get_span_context().span_id
        return self.exporter.take(trace_id, span_id, tenant_id=tenant_id, run_id=run_id)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span queued for OTLP now; ``False`` if that took over the timeout."""
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Stop the provider (queued OTLP spans are exported first)."""
        self.provider.shutdown()
