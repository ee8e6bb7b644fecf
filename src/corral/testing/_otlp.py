"""A small OTLP/HTTP receiver: what a collector would get from Corral, decoded for assertions.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (the OTLP/HTTP
binary encoding, gzip or not; https://opentelemetry.io/docs/specs/otlp/#otlphttp) and keeps
each span as a :class:`ReceivedSpan`, and ``POST /v1/metrics`` with an
``ExportMetricsServiceRequest``, keeping each metric as a :class:`ReceivedMetric`. Point Corral
at it with the standard variables (:meth:`OtlpReceiver.environ`), run something, flush the
tracer provider (or export the metrics once), read the spans and metrics.

```python
from corral.testing import OtlpReceiver

with OtlpReceiver() as receiver:
    assert receiver.environ()["OTEL_EXPORTER_OTLP_ENDPOINT"] == receiver.endpoint
    assert receiver.spans == []
```
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from corral.testing._http import ThreadedHTTPServer

__all__ = ["OtlpReceiver", "ReceivedMetric", "ReceivedPoint", "ReceivedSpan"]

_PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP collector received it.

    Attributes:
        trace_id: 32 lowercase hex digits.
        span_id: 16 lowercase hex digits.
        parent_span_id: The parent's span id; ``None`` for a root span.
        name: The span name (``invoke_agent repo-analyst``).
        kind: ``SPAN_KIND_INTERNAL``, ``SPAN_KIND_CLIENT``...
        start_time_unix_nano: Start, nanoseconds since the Unix epoch.
        end_time_unix_nano: End, nanoseconds since the Unix epoch.
        attributes: Attribute values as Python values (arrays as lists).
        status_code: ``STATUS_CODE_UNSET``, ``STATUS_CODE_OK`` or ``STATUS_CODE_ERROR``.
        status_message: The status description.
        resource: The resource's attributes (``service.name``...).
        scope: The instrumentation scope's name (``corral``).
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    attributes: dict[str, Any]
    status_code: str
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


def _value(any_value: Any) -> Any:
    """A protobuf ``AnyValue`` as a Python value."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


def decode_traces(body: bytes) -> list[ReceivedSpan]:
    """The spans of one binary ``ExportTraceServiceRequest``.

    Raises:
        google.protobuf.message.DecodeError: ``body`` is not one.
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind),
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status_code=Status.StatusCode.Name(span.status.code),
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of a received metric.

    Attributes:
        attributes: The point's attributes (the Prometheus labels).
        start_time_unix_nano: Start of the cumulative period, nanoseconds since the Unix epoch.
        time_unix_nano: When the value was read, nanoseconds since the Unix epoch.
        value: A Sum's or Gauge's value; ``None`` for a Histogram.
        count: A Histogram's number of observations.
        sum: A Histogram's sum of observations.
        explicit_bounds: A Histogram's bucket upper bounds (``+Inf`` implied after the last).
        bucket_counts: A Histogram's observations per bucket (not cumulative), one more than
            ``explicit_bounds``.
        exemplar_trace_ids: The trace ids (32 hex digits) of the point's exemplars.
    """

    attributes: dict[str, Any]
    start_time_unix_nano: int
    time_unix_nano: int
    value: float | None = None
    count: int = 0
    sum: float = 0.0
    explicit_bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)
    exemplar_trace_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReceivedMetric:
    """One metric of one export request, as an OTLP collector received it.

    Attributes:
        name: The metric name (``corral_tool_calls``).
        kind: ``sum``, ``gauge``, ``histogram``, ``exponential_histogram`` or ``summary``.
        points: Its data points.
        description: Its description.
        unit: Its unit (often empty).
        monotonic: Whether a Sum is monotonic.
        temporality: ``AGGREGATION_TEMPORALITY_CUMULATIVE`` or ``..._DELTA`` (Sum, Histogram);
            empty otherwise.
        resource: The resource's attributes (``service.name``...).
        scope: The instrumentation scope's name (``corral``).
    """

    name: str
    kind: str
    points: list[ReceivedPoint]
    description: str = ""
    unit: str = ""
    monotonic: bool = False
    temporality: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    def point(self, **attributes: Any) -> ReceivedPoint:
        """The one point whose attributes are exactly ``attributes``.

        Raises:
            LookupError: There is none (the message lists the attribute sets there are).
        """
        for point in self.points:
            if point.attributes == attributes:
                return point
        raise LookupError(
            f"Metric {self.name!r} has no point with attributes {attributes!r}; it has "
            f"{[p.attributes for p in self.points]!r}."
        )


def _point(point: Any, kind: str) -> ReceivedPoint:
    common = {
        "attributes": _attributes(point.attributes),
        "start_time_unix_nano": point.start_time_unix_nano,
        "time_unix_nano": point.time_unix_nano,
        "exemplar_trace_ids": [e.trace_id.hex() for e in getattr(point, "exemplars", [])],
    }
    if kind in ("sum", "gauge"):
        number = point.WhichOneof("value")
        return ReceivedPoint(**common, value=float(getattr(point, number)) if number else None)
    if kind == "histogram":
        return ReceivedPoint(
            **common,
            count=point.count,
            sum=point.sum,
            explicit_bounds=list(point.explicit_bounds),
            bucket_counts=list(point.bucket_counts),
        )
    return ReceivedPoint(**common, count=point.count, sum=point.sum)


def decode_metrics(body: bytes) -> list[ReceivedMetric]:
    """The metrics of one binary ``ExportMetricsServiceRequest``.

    Raises:
        google.protobuf.message.DecodeError: ``body`` is not one.
    """
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    metrics = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data") or ""
                data = getattr(metric, kind) if kind else None
                temporality = getattr(data, "aggregation_temporality", None)
                metrics.append(
                    ReceivedMetric(
                        name=metric.name,
                        kind=kind,
                        points=[_point(p, kind) for p in data.data_points] if data else [],
                        description=metric.description,
                        unit=metric.unit,
                        monotonic=bool(getattr(data, "is_monotonic", False)),
                        temporality=(
                            AggregationTemporality.Name(temporality) if temporality else ""
                        ),
                        resource=resource,
                        scope=scope_metrics.scope.name,
                    )
                )
    return metrics


class _Handler(BaseHTTPRequestHandler):
    receiver: OtlpReceiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.path not in ("/v1/traces", "/v1/metrics", "/v1/logs"):
            self._answer(404, b"")
            return
        if not (self.headers.get("Content-Type") or "").startswith(_PROTOBUF):
            self._answer(415, b"only OTLP/HTTP protobuf (application/x-protobuf) is accepted")
            return
        self.receiver._received(self.path, dict(self.headers.items()), body)
        self._answer(200, b"")  # an empty Export*ServiceResponse: everything accepted

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _PROTOBUF if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the records
        return


class OtlpReceiver(ThreadedHTTPServer):
    """An OTLP/HTTP endpoint on a free local port, for tests; use it as a context manager.

    Args:
        host: Interface to listen on.

    Attributes:
        spans: Every span received so far, in arrival order.
        headers: The HTTP headers of each trace export request (``OTEL_EXPORTER_OTLP_HEADERS``
            arrive here).
        metrics: Every metric received so far, one per metric per export request, in arrival
            order (a cumulative metric exported twice appears twice: see :meth:`last_metric`).
        metric_headers: The HTTP headers of each metric export request.
        bodies: Raw bodies received, by path (``/v1/logs`` is accepted and kept undecoded).
    """

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        super().__init__(host=host, thread_name="corral-otlp-receiver")
        self.host = host
        self.spans: list[ReceivedSpan] = []
        self.headers: list[dict[str, str]] = []
        self.metrics: list[ReceivedMetric] = []
        self.metric_headers: list[dict[str, str]] = []
        self.bodies: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``): ``OTEL_EXPORTER_OTLP_ENDPOINT``'s value."""
        return self._url

    def environ(self) -> dict[str, str]:
        """The variables that send an OpenTelemetry SDK's spans here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def spans_of(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans received for one trace (32 hex digits)."""
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> Iterator[ReceivedSpan]:
        """The spans received whose parent is ``parent``."""
        with self._lock:
            found = [s for s in self.spans if s.parent_span_id == parent.span_id]
        yield from found

    def last_metric(self, name: str) -> ReceivedMetric:
        """The metric ``name`` as the latest metric export request carried it.

        Raises:
            LookupError: No request carried it (the message lists the names received).
        """
        with self._lock:
            found = [m for m in self.metrics if m.name == name]
            names = sorted({m.name for m in self.metrics})
        if not found:
            raise LookupError(f"No metric {name!r} was received; received: {names!r}.")
        return found[-1]

    def _received(self, path: str, headers: Mapping[str, str], body: bytes) -> None:
        spans = decode_traces(body) if path == "/v1/traces" else []
        metrics = decode_metrics(body) if path == "/v1/metrics" else []
        lowered = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.bodies.setdefault(path, []).append(body)
            if path == "/v1/traces":
                self.headers.append(lowered)
                self.spans.extend(spans)
            elif path == "/v1/metrics":
                self.metric_headers.append(lowered)
                self.metrics.extend(metrics)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        class Handler(_Handler):
            receiver = self

        return Handler
