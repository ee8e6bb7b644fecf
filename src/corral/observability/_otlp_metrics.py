"""OTLP metric export: :data:`~corral.observability.REGISTRY`'s samples, pushed to a collector.

When the standard ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` (used as given) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/metrics`` appended) variable is set, a background thread
converts this process's metrics to one OTLP ``ExportMetricsServiceRequest`` every
``OTEL_METRIC_EXPORT_INTERVAL`` milliseconds (default 60000) and POSTs it over OTLP/HTTP
(protobuf; https://opentelemetry.io/docs/specs/otlp/#otlphttp). ``OTEL_SDK_DISABLED=true`` or
``OTEL_METRICS_EXPORTER=none`` turn it off. The request carries
``OTEL_EXPORTER_OTLP_HEADERS`` (then ``_METRICS_HEADERS``), honours ``_TIMEOUT`` (milliseconds,
default 10000), ``_COMPRESSION=gzip`` and ``_CERTIFICATE`` (each ``_METRICS_`` variant first).

The conversion follows the OpenTelemetry Prometheus compatibility spec
(https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/): a counter
becomes a cumulative, monotonic Sum named by its family (``corral_tool_calls``, without
``_total``), a gauge a Gauge, a histogram a cumulative Histogram (explicit bounds from ``le``,
per-bucket counts from the cumulative buckets, sum and count); labels become attributes. A point
starts at its ``_created`` time when the client has one, else when this module was imported.
Exemplars naming a trace (durations, tool calls; not in multiprocess mode) become OTLP exemplars
with that ``trace_id``, so a backend can jump from a point to the trace.
Other metric types (none of Corral's) are left out.

This module (protobuf, httpx) is imported only when export is configured
(:func:`~corral.observability.otlp_metric_exporter`).

Each process exports its own values, as an OpenTelemetry SDK would (also in prometheus_client's
multiprocess mode): give each process its own ``service.instance.id`` through
``OTEL_RESOURCE_ATTRIBUTES`` to keep their streams apart. Failures are logged (at most once a
minute) and never raised into the application.
"""

from __future__ import annotations

import gzip
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.util.re import parse_env_headers
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from corral.observability._metrics import REGISTRY

__all__ = ["OtlpMetricExporter", "metrics_request"]

log = logging.getLogger(__name__)

_SUPPORTED_PROTOCOL = "http/protobuf"
_DEFAULT_INTERVAL_MS = 60_000
_DEFAULT_TIMEOUT_MS = 10_000
_FAILURE_LOG_SECONDS = 60.0
_CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_IMPORTED_NS = time.time_ns()


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        array = AnyValue()
        array.array_value.values.extend(_any_value(v) for v in value)
        return array
    return AnyValue(string_value=str(value))


def _key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _start_times(metric: Metric, default_ns: int) -> dict[tuple[tuple[str, str], ...], int]:
    """The ``_created`` time of each label set, in nanoseconds."""
    created = metric.name + "_created"
    return {
        _label_key(s.labels): int(s.value * 1e9) if s.value else default_ns
        for s in metric.samples
        if s.name == created
    }


def _exemplars(samples: Iterable[Sample], now_ns: int) -> list[metrics_pb2.Exemplar]:
    """The samples' exemplars that name a trace (``trace_id``, 32 hex digits) as OTLP ones."""
    exemplars = []
    for sample in samples:
        exemplar = sample.exemplar
        trace_id = exemplar.labels.get("trace_id", "") if exemplar is not None else ""
        if exemplar is None or len(trace_id) != 32:
            continue
        try:
            trace_bytes = bytes.fromhex(trace_id)
        except ValueError:
            continue
        exemplars.append(
            metrics_pb2.Exemplar(
                time_unix_nano=int(float(exemplar.timestamp) * 1e9)
                if exemplar.timestamp
                else now_ns,
                as_double=float(exemplar.value),
                trace_id=trace_bytes,
            )
        )
    return exemplars


def _number_points(
    metric: Metric, sample_name: str, start_ns: int, now_ns: int
) -> list[metrics_pb2.NumberDataPoint]:
    starts = _start_times(metric, start_ns)
    return [
        metrics_pb2.NumberDataPoint(
            attributes=_key_values(s.labels),
            start_time_unix_nano=starts.get(_label_key(s.labels), start_ns),
            time_unix_nano=now_ns,
            as_double=float(s.value),
            exemplars=_exemplars([s], now_ns),
        )
        for s in metric.samples
        if s.name == sample_name
    ]


def _histogram_points(
    metric: Metric, start_ns: int, now_ns: int
) -> list[metrics_pb2.HistogramDataPoint]:
    starts = _start_times(metric, start_ns)
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    bucket_samples: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
    totals: dict[tuple[tuple[str, str], ...], dict[str, float]] = {}
    for sample in metric.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = _label_key(labels)
        suffix = sample.name[len(metric.name) :]
        if suffix == "_bucket":
            buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
            bucket_samples.setdefault(key, []).append(sample)
        elif suffix in ("_sum", "_count"):
            totals.setdefault(key, {})[suffix] = sample.value
    points = []
    for key, cumulative in buckets.items():
        cumulative.sort()
        count = int(totals.get(key, {}).get("_count", cumulative[-1][1]))
        bounds = [le for le, _ in cumulative if le != float("inf")]
        previous, counts = 0.0, []
        for _, running in cumulative[: len(bounds)]:
            counts.append(int(running - previous))
            previous = running
        counts.append(count - int(previous))  # the overflow bucket, above the last bound
        points.append(
            metrics_pb2.HistogramDataPoint(
                attributes=_key_values(dict(key)),
                start_time_unix_nano=starts.get(key, start_ns),
                time_unix_nano=now_ns,
                count=count,
                sum=totals.get(key, {}).get("_sum", 0.0),
                bucket_counts=counts,
                explicit_bounds=bounds,
                exemplars=_exemplars(bucket_samples[key], now_ns),
            )
        )
    return points


def _otlp_metric(metric: Metric, start_ns: int, now_ns: int) -> metrics_pb2.Metric | None:
    out = metrics_pb2.Metric(name=metric.name, description=metric.documentation, unit=metric.unit)
    if metric.type == "counter":
        points = _number_points(metric, metric.name + "_total", start_ns, now_ns)
        out.sum.CopyFrom(
            metrics_pb2.Sum(
                data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True
            )
        )
    elif metric.type == "gauge":
        points = _number_points(metric, metric.name, start_ns, now_ns)
        out.gauge.CopyFrom(metrics_pb2.Gauge(data_points=points))
    elif metric.type == "histogram":
        histogram = _histogram_points(metric, start_ns, now_ns)
        out.histogram.CopyFrom(
            metrics_pb2.Histogram(data_points=histogram, aggregation_temporality=_CUMULATIVE)
        )
        return out if histogram else None
    else:
        return None
    return out if points else None


def metrics_request(
    metrics: Iterable[Metric],
    resource: Resource,
    *,
    start_time_unix_nano: int = _IMPORTED_NS,
    time_unix_nano: int | None = None,
) -> ExportMetricsServiceRequest:
    """One OTLP ``ExportMetricsServiceRequest`` holding ``metrics`` (see the module docstring).

    Args:
        metrics: Metric families, as ``CollectorRegistry.collect()`` yields them.
        resource: The resource they describe (``service.name``...).
        start_time_unix_nano: Start of a point that has no ``_created`` time, nanoseconds
            since the Unix epoch.
        time_unix_nano: Time of every point, nanoseconds since the Unix epoch (default now).

    Returns:
        The request: one resource, scope ``corral``, one OTLP metric per family that has
        samples (counters, gauges and histograms only).
    """
    now_ns = time.time_ns() if time_unix_nano is None else time_unix_nano
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(_key_values(dict(resource.attributes)))
    resource_metrics.schema_url = resource.schema_url
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = "corral"
    for metric in metrics:
        converted = _otlp_metric(metric, start_time_unix_nano, now_ns)
        if converted is not None:
            scope_metrics.metrics.append(converted)
    return request


def _first(environ: Mapping[str, str], *names: str) -> str:
    return next((environ[n].strip() for n in names if environ.get(n, "").strip()), "")


def _milliseconds(environ: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    raw = _first(environ, *names)
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = -1
    if value <= 0:
        log.warning(
            "%s=%r is not a positive number of milliseconds; using %d", names[0], raw, default
        )
        return default
    return value


class OtlpMetricExporter:
    """Pushes a registry's metrics to an OTLP/HTTP collector, now or periodically.

    Built from the ``OTEL_*`` variables (see the module docstring); most code uses
    :func:`~corral.observability.otlp_metric_exporter`, which returns ``None`` when export is
    not configured.

    Args:
        resource: The resource of the metrics (the spans' one: ``Tracing.provider.resource``).
        registry: The metrics exported (default :data:`~corral.observability.REGISTRY`).
        environ: The variables read (default ``os.environ``).

    Attributes:
        endpoint: The URL posted to (``{OTEL_EXPORTER_OTLP_ENDPOINT}/v1/metrics`` or
            ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` as given).
        interval_seconds: Seconds between periodic exports (``OTEL_METRIC_EXPORT_INTERVAL``).
        timeout_seconds: Timeout of one POST, seconds.
    """

    def __init__(
        self,
        *,
        resource: Resource,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.resource = resource
        self.registry = REGISTRY if registry is None else registry
        given = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/")
        self.endpoint = given or f"{base}/v1/metrics"
        protocol = _first(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol != _SUPPORTED_PROTOCOL:
            log.warning(
                "OTLP protocol %r is not supported; metrics are exported with %r instead (set "
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and point the endpoint at the "
                "collector's OTLP/HTTP port, usually 4318)",
                protocol,
                _SUPPORTED_PROTOCOL,
            )
        self.interval_seconds = (
            _milliseconds(env, ("OTEL_METRIC_EXPORT_INTERVAL",), _DEFAULT_INTERVAL_MS) / 1000
        )
        timeout_names = ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        self.timeout_seconds = _milliseconds(env, timeout_names, _DEFAULT_TIMEOUT_MS) / 1000
        self._headers = {
            **parse_env_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), liberal=True),
            **parse_env_headers(env.get("OTEL_EXPORTER_OTLP_METRICS_HEADERS", ""), liberal=True),
            "content-type": "application/x-protobuf",
        }
        compression = _first(
            env, "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
        )
        self._gzip = compression.lower() == "gzip"
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        certificate = _first(
            env, "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
        )
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=certificate) if certificate else True
        )
        self._client = httpx.Client(timeout=self.timeout_seconds, verify=verify)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_failure_log = -_FAILURE_LOG_SECONDS
        self._unlogged_failures = 0

    def export_once(self) -> bool:
        """Export the registry's current values now (blocking, at most the timeout).

        Returns:
            ``True`` when the collector accepted them (a 2xx answer); ``False`` when the POST
            failed or was refused (logged, rate-limited), or the exporter is shut down.
        """
        with self._lock:
            if self._closed:
                return False
            try:
                body = metrics_request(self.registry.collect(), self.resource).SerializeToString()
                if self._gzip:
                    body = gzip.compress(body)
                response = self._client.post(self.endpoint, content=body, headers=self._headers)
            except Exception as error:  # never into the app: a collector outage is not ours
                self._failed(f"{type(error).__name__}: {error}")
                return False
            if not response.is_success:
                self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
                return False
            return True

    def _failed(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < _FAILURE_LOG_SECONDS:
            self._unlogged_failures += 1
            return
        log.warning(
            "OTLP metric export to %s failed (%s; %d earlier failures not logged); check that "
            "the collector is up and accepts OTLP/HTTP protobuf there",
            self.endpoint,
            reason,
            self._unlogged_failures,
        )
        self._last_failure_log, self._unlogged_failures = now, 0

    def start(self) -> None:
        """Export every :attr:`interval_seconds` from a daemon thread (once; later calls no-op)."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._run, name="corral-otlp-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.export_once()

    def shutdown(self) -> None:
        """Stop the thread, export one last time (the final values), close the connection."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.export_once()
        with self._lock:
            self._closed = True
            self._client.close()
