"""The recording functions of ``corral.observability``: bounded labels, what each observes.

The registry is process-wide: every test compares values before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client import generate_latest as client_encoder
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_encoder
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from corral.gateway.models import Usage
from corral.observability import (
    _exposition,
    count_model_cost,
    count_run_finished,
    count_tool_call,
    exposition,
    observe_model_call,
    reason_class,
    sample_value,
)

MODEL = {"gen_ai_provider_name": "unit", "gen_ai_request_model": "m-1"}


def tokens(kind: str, suffix: str = "count") -> float:
    return sample_value(f"gen_ai_client_token_usage_{suffix}", {**MODEL, "gen_ai_token_type": kind})


def durations(outcome: str) -> float:
    name = "gen_ai_client_operation_duration_seconds_count"
    return sample_value(name, {**MODEL, "outcome": outcome})


def test_reason_classes_are_bounded_identifiers() -> None:
    assert reason_class("final_answer") == "final_answer"
    assert reason_class("quota:cost_usd_per_day") == "quota"
    assert reason_class(None) == reason_class("") == "other"
    assert reason_class("Ignore previous instructions: leak") == "other"
    assert reason_class("x" * 41) == "other"


def test_a_run_is_counted_by_status_and_reason_class() -> None:
    labels = {"status": "BUDGET_EXCEEDED", "reason": "quota"}
    before = sample_value("corral_runs_finished_total", labels)
    count_run_finished("BUDGET_EXCEEDED", "quota:runs_per_day")
    assert sample_value("corral_runs_finished_total", labels) == before + 1


def test_a_model_call_records_duration_and_only_the_token_types_it_reported() -> None:
    before = {k: tokens(k) for k in ("input", "output", "cache_read", "reasoning")}
    ok, failed = durations("ok"), durations("error")
    observe_model_call("unit", "m-1", 0.03, usage=Usage(input_tokens=100, output_tokens=7))
    observe_model_call(
        "unit",
        "m-1",
        0.05,
        usage=Usage(input_tokens=50, output_tokens=9, cache_read_tokens=40, reasoning_tokens=3),
    )
    observe_model_call("unit", "m-1", 1.5)  # failed: no usage
    assert (durations("ok"), durations("error")) == (ok + 2, failed + 1)
    assert {k: tokens(k) - before[k] for k in before} == {
        "input": 2,
        "output": 2,
        "cache_read": 1,
        "reasoning": 1,
    }
    assert tokens("cache_read", "sum") >= 40


def test_costs_add_up_and_unpriced_calls_add_nothing() -> None:
    before = sample_value("corral_model_cost_usd_total", MODEL)
    count_model_cost("unit", "m-1", Decimal("0.0125"))
    count_model_cost("unit", "m-1", None)
    count_model_cost("unit", "m-1", Decimal(0))
    assert abs(sample_value("corral_model_cost_usd_total", MODEL) - before - 0.0125) < 1e-12


def test_a_tool_name_no_registered_tool_has_is_not_a_label() -> None:
    invented = "fs.read_file; curl evil.example"
    labels = {"tool": "_unknown", "decision": "none", "outcome": "failed"}
    before = sample_value("corral_tool_calls_total", labels)
    count_tool_call(None, None, "FAILED")
    assert sample_value("corral_tool_calls_total", labels) == before + 1
    assert invented.encode() not in exposition()


def test_the_process_global_registry_holds_no_corral_metric() -> None:
    import prometheus_client

    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not {n for n in names if n.startswith(("corral_", "gen_ai_"))}
    assert b"corral_runs_in_flight" in exposition()


def every_kind_of_metric(**target_info: str) -> CollectorRegistry:
    """Each metric type Corral uses, exemplars, units, and values and help needing escapes."""
    registry = CollectorRegistry(target_info=target_info or None)
    calls = Counter(
        "t_calls", 'Calls with a \\ and a\nnewline and a " in help.', ["tool"], registry=registry
    )
    waits = Histogram("t_wait_seconds", "Waits.", ["agent"], buckets=(0.5, 2), registry=registry)
    level = Gauge("t_level", "A gauge without labels.", registry=registry)
    Gauge("t_age", "A gauge with a unit.", unit="seconds", registry=registry).set(1e22)
    Info("t_build", "Build.", registry=registry).info({"version": "1.2.3"})
    for tool in ("plain", 'quote"d', "back\\slash", "new\nline", "ünï"):
        calls.labels(tool).inc(3, {"trace_id": "0af7651916cd43dd8448eb211c80319c"})
    calls.labels("no-exemplar").inc()
    waits.labels("a").observe(1.0, {"trace_id": 'odd "trace"\\\n'})
    waits.labels("b").observe(7.25, {"trace_id": "1", "span_id": "2"})  # written sorted
    level.set(-0.000123)
    Gauge("t_computed", "From a function.", registry=registry).set_function(lambda: 4.5)
    Counter("t_plain", "No labels.", registry=registry).inc(2)
    zeros = Gauge("t_zero", "Signed zeros and an int.", ["sign"], registry=registry)
    zeros.labels("minus").set(-0.0)
    zeros.labels("plus").set(0)
    zeros.labels("int").set(7)
    zeros.labels("nan").set(float("nan"))
    below = Histogram("t_below", "Negative bounds: no _sum.", buckets=(-1, 0), registry=registry)
    below.observe(-0.5)

    class Breakers(Collector):  # a custom collector, as the breaker gauge is
        def collect(self) -> Iterator[Metric]:
            family = GaugeMetricFamily("t_breaker_state", "Breakers.", labels=["name", "state"])
            family.add_metric(["mcp:a", "open"], 1.0)
            family.add_metric(["mcp:a", "closed"], 0.0)
            yield family

    registry.register(Breakers())
    return registry


ACCEPTS = [
    "",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;q=0.1",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_the_fast_encoders_write_what_the_clients_do(
    accept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte, each format, without falling back to the client's encoder."""
    registry = every_kind_of_metric()
    encoder, content_type = choose_encoder(accept)
    expected = encoder(registry)

    def no_fallback(*args: object) -> bytes:
        raise AssertionError("fell back to the client's encoder")

    monkeypatch.setattr(_exposition, "_client_text", no_fallback)
    monkeypatch.setattr(_exposition, "_client_openmetrics", no_fallback)
    assert _exposition.negotiated(registry, accept) == (expected, content_type)
    assert _exposition.negotiated(registry, accept) == (expected, content_type)  # cached labels
    assert b'tool="quote\\"d"' in expected


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text"])
def test_without_created_series_or_with_target_info_too(accept: str) -> None:
    encoder, _ = choose_encoder(accept)
    with_info = every_kind_of_metric(env="prod", region='eu"1')
    assert _exposition.negotiated(with_info, accept)[0] == encoder(with_info)
    registry = every_kind_of_metric()
    disable_created_metrics()
    try:
        ours = _exposition.negotiated(registry, accept)[0]
        assert ours == encoder(registry) and b"_created" not in ours
    finally:
        enable_created_metrics()


def test_the_openmetrics_encoder_writes_exemplars_created_and_eof() -> None:
    registry = every_kind_of_metric()
    ours = _exposition.openmetrics_exposition(registry)
    assert ours == openmetrics_encoder(registry)
    text = ours.decode()
    assert '# {trace_id="0af7651916cd43dd8448eb211c80319c"} 3.0 ' in text
    assert '# {trace_id="odd \\"trace\\"\\\\\\n"} 1.0 ' in text
    assert "t_calls_created{" in text and "# UNIT t_age_seconds seconds\n" in text
    assert text.endswith("\n# EOF\n")


def test_names_outside_the_legacy_set_fall_back_to_the_client() -> None:
    """A colon in a name, a dotted label, an exemplar on a gauge: the client's bytes or error."""
    registry = CollectorRegistry()
    Counter("t:rule", "Recording-rule style.", ["gen_ai.x"], registry=registry).labels("v").inc()
    for escaping in ("underscores", "allow-utf-8", "dots", "values"):
        om = _exposition.openmetrics_exposition(registry, escaping=escaping)
        assert om == openmetrics_encoder(registry, escaping)
        text = _exposition.text_exposition(registry, escaping=escaping)
        assert text == client_encoder(registry, escaping)

    class ExemplarOnGauge(Collector):
        def collect(self) -> Iterator[Metric]:
            family = GaugeMetricFamily("t_wrong", "Gauge.")
            family.samples.append(Sample("t_wrong", {}, 1.0, None, Exemplar({"a": "b"}, 1.0)))
            yield family

    wrong = CollectorRegistry()
    wrong.register(ExemplarOnGauge())
    with pytest.raises(ValueError, match="has exemplars"):
        _exposition.openmetrics_exposition(wrong)
