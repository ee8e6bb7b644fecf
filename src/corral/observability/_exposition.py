"""The Prometheus text and OpenMetrics formats, written faster than prometheus_client does.

prometheus_client 0.26 checks and escapes every label name of every sample (names may be
UTF-8 since OpenMetrics 2), which is most of a scrape's time: about 20 us per series, so a
deployment with 3,000 series (50 agents' step histograms, 100 tools' call counters, model
token histograms...) took 50-60 ms of CPU per scrape for the text format. Its OpenMetrics
encoder also escapes every sample's name one character at a time (through a ``StringIO``),
2.5x the text format's cost. Here each distinct label set is formatted once and reused for as
long as the process lives (a series' labels never change), and names are checked once per
name. The output is byte for byte the client's (a test compares them, exemplars included);
anything unusual (a name outside the legacy character set, an escaping scheme other than
``underscores`` / ``allow-utf-8``, a native histogram, a sample timestamp in the text format)
falls back to the client's encoder, which also raises the client's errors (an exemplar on a
gauge).

Why ``underscores`` and ``allow-utf-8`` give the same bytes here: they differ only for names
outside the legacy sets (``[a-zA-Z_][a-zA-Z0-9_]*`` for label names, not starting ``__``;
sample names in OpenMetrics without ``:``), which this encoder never writes itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Final

from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["negotiated", "openmetrics_exposition", "text_exposition"]

_METRIC_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
"""prometheus_client's legacy metric names (``METRIC_NAME_RE``): written unquoted, unescaped."""
_PLAIN_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
"""Names every escaping scheme we handle leaves alone (label names, OpenMetrics sample names)."""
_ESCAPINGS: Final = frozenset((openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8))
_OM_SUFFIXES: Final = ("_created", "_gsum", "_gcount")
_TYPES: Final = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}

_client_text: Callable[..., bytes] = generate_latest
"""The client's encoders, the fallbacks (module names, so a test can check they are not used)."""
_client_openmetrics: Callable[..., bytes] = openmetrics.generate_latest
_go_float: Final[Callable[[float], str]] = floatToGoString
"""Go's float formatting, as the client writes values (``+Inf``, ``1e+22``)."""

_label_strings: dict[tuple[tuple[str, str], ...], str] = {}
"""Formatted ``{k="v",...}`` by label set (bounded by the process's series)."""
_plain_sample_names: set[str] = set()
"""Sample names already checked against :data:`_PLAIN_NAME` (OpenMetrics)."""
_legacy_sample_names: set[str] = set()
"""Sample names already checked against :data:`_METRIC_NAME` (text format)."""
_MAX_CACHED: Final = 100_000


class _Unusual(Exception):
    """A name or a sample this encoder does not write: use the client's."""


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _check_name(name: str, pattern: re.Pattern[str], checked: set[str]) -> None:
    if not pattern.match(name):
        raise _Unusual(name)
    if len(checked) < _MAX_CACHED:
        checked.add(name)


def _labels(labels: dict[str, str]) -> str:
    key = tuple(labels.items())
    found = _label_strings.get(key)
    if found is None:
        for name in labels:
            if not _PLAIN_NAME.match(name) or name.startswith("__"):
                raise _Unusual(name)
        pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
        found = "{" + pairs + "}" if pairs else ""
        if len(_label_strings) < _MAX_CACHED:
            _label_strings[key] = found
    return found


def _family(metric: Metric, output: list[str]) -> None:
    name, kind = metric.name, metric.type
    if not _METRIC_NAME.match(name):
        raise _Unusual(name)
    exposed = name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
    help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    output.append(f"# HELP {exposed} {help_text}\n# TYPE {exposed} {_TYPES.get(kind, kind)}\n")
    extra: dict[str, list[str]] = {}
    for sample in metric.samples:
        if sample.timestamp is not None:
            raise _Unusual(sample.name)
        if sample.name not in _legacy_sample_names:
            _check_name(sample.name, _METRIC_NAME, _legacy_sample_names)
        value = _go_float(sample.value)
        line = f"{sample.name}{_labels(sample.labels)} {value}\n"
        suffix = sample.name[len(name) :]
        if suffix in _OM_SUFFIXES and sample.name.startswith(name):
            extra.setdefault(suffix, []).append(line)
        else:
            output.append(line)
    for suffix, lines in sorted(extra.items()):
        output.append(f"# HELP {name}{suffix} {help_text}\n# TYPE {name}{suffix} gauge\n")
        output.extend(lines)


def text_exposition(registry: Collector, *, escaping: str = openmetrics.UNDERSCORES) -> bytes:
    """Every metric of ``registry`` in the Prometheus text format (``generate_latest``'s).

    Args:
        registry: The collector (a registry) to read.
        escaping: The name escaping scheme the scraper asked for (``Accept: ...;
            escaping=...``), as prometheus_client's ``generate_latest`` takes it.

    Returns:
        The exposition, UTF-8.
    """
    output: list[str] = []
    metrics = list(registry.collect())
    try:
        if escaping not in _ESCAPINGS:
            raise _Unusual(escaping)
        for metric in metrics:
            _family(metric, output)
    except _Unusual:
        return _client_text(registry, escaping)
    return "".join(output).encode("utf-8")


def _is_valid_exemplar_metric(metric: Metric, sample: Sample) -> bool:
    """Where OpenMetrics allows an exemplar (prometheus_client's rule, same order)."""
    kind, name = metric.type, sample.name
    if kind == "counter" and name.endswith("_total"):
        return True
    if kind == "gaugehistogram" and name.endswith("_bucket"):
        return True
    return kind == "histogram" and (name.endswith("_bucket") or name == metric.name)


def _om_sample(metric: Metric, sample: Sample) -> str:
    name = sample.name
    if name not in _plain_sample_names:
        _check_name(name, _PLAIN_NAME, _plain_sample_names)
    if sample.native_histogram is not None or sample.value is None:
        raise _Unusual(name)
    line = name + _labels(sample.labels) + " " + _go_float(sample.value)
    if sample.timestamp is not None:
        line += f" {sample.timestamp}"
    exemplar = sample.exemplar
    if exemplar is not None:
        if not _is_valid_exemplar_metric(metric, sample):
            raise _Unusual(name)  # the client raises its ValueError
        pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(exemplar.labels.items()))
        line += " # {" + pairs + "} " + _go_float(exemplar.value)
        if exemplar.timestamp is not None:
            line += f" {exemplar.timestamp}"
    return line + "\n"


def _om_family(metric: Metric, output: list[str]) -> None:
    name = metric.name
    if not _METRIC_NAME.match(name):
        raise _Unusual(name)
    header = f"# HELP {name} {_escape_value(metric.documentation)}\n# TYPE {name} {metric.type}\n"
    if metric.unit:
        header += f"# UNIT {name} {metric.unit}\n"
    output.append(header)
    output.extend([_om_sample(metric, sample) for sample in metric.samples])


def openmetrics_exposition(
    registry: Collector, *, escaping: str = openmetrics.UNDERSCORES, version: str = "1.0.0"
) -> bytes:
    """Every metric of ``registry`` in OpenMetrics, with exemplars (the client's encoder's).

    Args:
        registry: The collector (a registry) to read.
        escaping: The name escaping scheme the scraper asked for.
        version: The OpenMetrics version the scraper asked for (it matters only for native
            histograms, which this encoder leaves to the client's).

    Returns:
        The exposition, UTF-8, ending in ``# EOF``.

    Raises:
        ValueError: A sample carries an exemplar where OpenMetrics allows none (the client's
            error, from its encoder).
    """
    output: list[str] = []
    metrics = list(registry.collect())
    try:
        if escaping not in _ESCAPINGS:
            raise _Unusual(escaping)
        for metric in metrics:
            _om_family(metric, output)
    except _Unusual:
        return _client_openmetrics(registry, escaping, version)
    output.append("# EOF\n")
    return "".join(output).encode("utf-8")


def negotiated(registry: Collector, accept: str) -> tuple[bytes, str]:
    """``registry`` in the format ``accept`` asks for, and its content type.

    The choice is prometheus_client's ``choose_encoder`` (OpenMetrics for
    ``application/openmetrics-text``, with the version and escaping asked for; the Prometheus
    text format otherwise); the bytes are this module's encoders'.

    Args:
        registry: The collector (a registry) to read.
        accept: The request's ``Accept`` header (``""`` when absent).

    Returns:
        ``(body, content_type)``.
    """
    encoder, content_type = choose_encoder(accept)
    if encoder is generate_latest:
        return text_exposition(registry), content_type
    if isinstance(encoder, partial):
        options = encoder.keywords
        if encoder.func is generate_latest and not encoder.args:
            return text_exposition(registry, **options), content_type
        if encoder.func is openmetrics.generate_latest and not encoder.args:
            return openmetrics_exposition(registry, **options), content_type
    return encoder(registry), content_type
