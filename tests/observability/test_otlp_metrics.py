"""OTLP metric export: the registry's counters, gauges and histograms reach a collector (a real
OTLP/HTTP receiver) with their values, attributes and the spans' resource."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from test_spans import run_and_spans

from corral.observability import (
    OtlpMetricExporter,
    otlp_metric_exporter,
    otlp_metrics_configured,
    sample_value,
    set_queue_depth,
)
from corral.testing import OtlpReceiver, ScriptedModel

STEP_BOUNDS = [
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
]
RESOURCE = Resource.create({"service.name": "corral-test"})


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver the standard OTEL_* variables point at; the periodic export never fires."""
    with OtlpReceiver() as started:
        for name, value in started.environ().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-corral-test=otlp%20header")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "3600000")  # an hour: tests export
        yield started


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def step_samples(agent: str) -> tuple[float, float, list[float]]:
    """Count, sum and cumulative bucket counts of the step-duration histogram, from the registry."""
    labels = {"agent": agent}
    cumulative = [
        sample_value("corral_run_step_duration_seconds_bucket", {**labels, "le": le})
        for le in [*map(str, STEP_BOUNDS), "+Inf"]
    ]
    return (
        sample_value("corral_run_step_duration_seconds_count", labels),
        sample_value("corral_run_step_duration_seconds_sum", labels),
        cumulative,
    )


async def test_a_runs_metrics_reach_the_collector(
    receiver: OtlpReceiver, make_platform: Any, workspace: Path
) -> None:
    model = ScriptedModel([ScriptedModel.call("fs.list_dir", path="."), ScriptedModel.answer("42")])
    platform = await make_platform(scripted=model)
    assert platform.metric_export is not None
    assert platform.metric_export.endpoint == f"{receiver.endpoint}/v1/metrics"
    tool = {"tool": "fs.list_dir", "decision": "allow", "outcome": "completed"}
    calls_before = sample_value("corral_tool_calls_total", tool)
    steps_before = sample_value("corral_run_step_duration_seconds_count", {"agent": "repo-analyst"})

    run, _ = await run_and_spans(platform, workspace)
    assert run.status == "SUCCEEDED"
    set_queue_depth(7)
    count, total, cumulative = step_samples("repo-analyst")
    assert platform.metric_export.export_once()

    calls = receiver.last_metric("corral_tool_calls")
    assert (calls.kind, calls.monotonic) == ("sum", True)
    assert calls.temporality == "AGGREGATION_TEMPORALITY_CUMULATIVE"
    assert calls.point(**tool).value == calls_before + 1
    assert calls.resource["service.name"] == "corral"
    assert calls.scope == "corral"

    depth = receiver.last_metric("corral_run_queue_depth")
    assert depth.kind == "gauge"
    assert [p.value for p in depth.points] == [7.0]

    steps = receiver.last_metric("corral_run_step_duration_seconds")
    assert steps.kind == "histogram"
    assert steps.temporality == "AGGREGATION_TEMPORALITY_CUMULATIVE"
    point = steps.point(agent="repo-analyst")
    assert point.count == count == steps_before + 2  # one model+tool step, one answer step
    assert point.sum == pytest.approx(total)
    assert point.explicit_bounds == STEP_BOUNDS
    assert point.bucket_counts == [
        int(b - a) for a, b in zip([0.0, *cumulative], cumulative, strict=False)
    ]
    assert sum(point.bucket_counts) == point.count
    assert 0 < point.start_time_unix_nano <= point.time_unix_nano
    assert run.trace_id in point.exemplar_trace_ids  # a step of this run, linked to its trace

    tokens = receiver.last_metric("gen_ai_client_token_usage").point(
        gen_ai_provider_name="scripted", gen_ai_request_model="test", gen_ai_token_type="input"
    )
    assert tokens.count == sample_value(
        "gen_ai_client_token_usage_count",
        {
            "gen_ai_provider_name": "scripted",
            "gen_ai_request_model": "test",
            "gen_ai_token_type": "input",
        },
    )
    assert tokens.sum >= run.input_tokens > 0
    assert receiver.metric_headers[-1]["x-corral-test"] == "otlp header"
    assert receiver.metric_headers[-1]["content-type"] == "application/x-protobuf"

    # Closing the platform exports the final values once more.
    requests = len(receiver.metric_headers)
    await platform.close()
    assert len(receiver.metric_headers) == requests + 1
    assert not platform.metric_export.export_once()  # shut down: nothing is sent


async def test_no_metric_export_unless_configured(
    monkeypatch: pytest.MonkeyPatch, make_platform: Any
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    platform = await make_platform()
    assert platform.metric_export is None


def test_the_variables_that_turn_metric_export_on_and_off() -> None:
    assert not otlp_metrics_configured({})
    assert otlp_metric_exporter(RESOURCE, {}) is None
    base = f"http://127.0.0.1:{closed_port()}"
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": base}
    assert otlp_metrics_configured(endpoint)
    assert otlp_metrics_configured({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318/m"})
    assert not otlp_metrics_configured({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not otlp_metrics_configured({**endpoint, "OTEL_METRICS_EXPORTER": "none"})
    # Turning span export off leaves metric export on.
    assert otlp_metrics_configured({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    exporter = otlp_metric_exporter(
        RESOURCE,
        {**endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "15000", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"},
    )
    assert exporter is not None
    assert (exporter.endpoint, exporter.interval_seconds, exporter.timeout_seconds) == (
        f"{base}/v1/metrics",
        15.0,
        2.5,
    )
    exporter.shutdown()  # its final export fails quietly: there is no such collector


def test_counters_gauges_and_histograms_convert_exactly() -> None:
    registry = CollectorRegistry()
    calls = Counter("demo_calls", "Calls.", ["tool"], registry=registry)
    depth = Gauge("demo_depth", "Depth.", registry=registry)
    latency = Histogram("demo_seconds", "Latency.", ["route"], buckets=(1, 2, 5), registry=registry)
    calls.labels("a").inc(3, exemplar={"trace_id": "ab" * 16})
    calls.labels("b").inc()
    depth.set(-2.5)
    for seconds in (0.5, 1.5, 1.7, 4, 9):
        latency.labels("/x").observe(seconds)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://unused:1",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1,x-b=2",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-b=3",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = f"{receiver.endpoint}/v1/metrics"
        exporter = OtlpMetricExporter(resource=RESOURCE, registry=registry, environ=env)
        assert exporter.export_once()
        exporter.shutdown()

    assert [m.name for m in receiver.metrics[:3]] == ["demo_calls", "demo_depth", "demo_seconds"]
    assert len(receiver.metrics) == 6  # the final export on shutdown sent them again
    assert {(p.attributes["tool"], p.value) for p in receiver.last_metric("demo_calls").points} == {
        ("a", 3.0),
        ("b", 1.0),
    }
    assert receiver.last_metric("demo_calls").description == "Calls."
    assert receiver.last_metric("demo_calls").point(tool="a").exemplar_trace_ids == ["ab" * 16]
    assert receiver.last_metric("demo_calls").point(tool="b").exemplar_trace_ids == []
    # A point's cumulative period starts when the client created its label set.
    created = registry.get_sample_value("demo_calls_created", {"tool": "a"})
    assert created is not None
    start = receiver.last_metric("demo_calls").point(tool="a").start_time_unix_nano
    assert start == int(created * 1e9)
    assert receiver.last_metric("demo_depth").point().value == -2.5
    point = receiver.last_metric("demo_seconds").point(route="/x")
    assert (point.count, point.sum) == (5, pytest.approx(16.7))
    assert point.explicit_bounds == [1.0, 2.0, 5.0]
    assert point.bucket_counts == [1, 2, 1, 1]
    assert receiver.last_metric("demo_seconds").resource["service.name"] == "corral-test"
    assert {h["x-a"] for h in receiver.metric_headers} == {"1"}
    assert {h["x-b"] for h in receiver.metric_headers} == {"3"}
    assert {h["content-encoding"] for h in receiver.metric_headers} == {"gzip"}


def test_a_collector_that_is_down_or_refuses_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    exporter = OtlpMetricExporter(resource=RESOURCE, environ=env)
    with caplog.at_level(logging.WARNING, logger="corral.observability._otlp_metrics"):
        assert not exporter.export_once()
        assert not exporter.export_once()
        exporter.shutdown()
    failures = [r for r in caplog.records if "OTLP metric export" in r.getMessage()]
    assert len(failures) == 1  # rate-limited: one warning a minute
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] in failures[0].getMessage()

    with OtlpReceiver() as receiver:  # answers 404 on a path it does not serve
        wrong = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{receiver.endpoint}/v1/nothing"}
        refused = OtlpMetricExporter(resource=RESOURCE, environ=wrong)
        assert not refused.export_once()
        refused.shutdown()
    assert receiver.metrics == []


def test_grpc_is_refused_with_a_clear_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}/",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",
    }
    with caplog.at_level(logging.WARNING, logger="corral.observability._otlp_metrics"):
        exporter = OtlpMetricExporter(resource=RESOURCE, environ=env)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "'grpc' is not supported" in warning
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in warning
    assert exporter.endpoint == env["OTEL_EXPORTER_OTLP_ENDPOINT"] + "v1/metrics"
    with caplog.at_level(logging.CRITICAL):
        exporter.shutdown()
