"""The Prometheus text and OpenMetrics formats, written faster than prometheus_client does.

Where the client's CPU goes, for 3,000 series (50 agents' step histograms, 100 tools' call
counters, model token histograms...): its text encoder checks and escapes every label name of
every sample (names may be UTF-8 since OpenMetrics 2), about 20 us per series; its OpenMetrics
encoder also escapes every sample's name one character at a time (through a ``StringIO``),
2.5x the text format's cost; and ``collect()`` builds a merged label dict and a ``Sample`` per
sample and formats every histogram bound on every scrape. Here:

- each series' line up to its value (``name{labels} ``) is formatted once per process and
  reused (a series' labels never change); names are checked once;
- counters, gauges and histograms of a plain registry are read from their children directly
  (values and exemplars, in the order of the client's ``_child_samples``); anything else
  (custom collectors, ``Info``, multiprocess mode's collector) is collected as before;
- the Go text of a value is memoised (counts and ``_created`` timestamps repeat).

The output is byte for byte the client's (tests compare them, exemplars included, in both
formats and in multiprocess mode); anything unusual (a name outside the legacy character set,
an escaping scheme other than ``underscores`` / ``allow-utf-8``, a native histogram, a sample
timestamp) falls back to the client's encoder, which also raises the client's errors (an
exemplar on a gauge).

Why ``underscores`` and ``allow-utf-8`` give the same bytes here: they differ only for names
outside the legacy sets (``[a-zA-Z_][a-zA-Z0-9_]*`` for label and sample names, label names
not starting ``__``), which this encoder never writes itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from math import copysign
from typing import Final, NamedTuple
from weakref import WeakKeyDictionary

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import metrics as client_metrics
from prometheus_client import values as client_values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
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
_client_go: Final[Callable[[float], str]] = floatToGoString

_label_strings: dict[tuple[tuple[str, str], ...], str] = {}
"""Formatted ``{k="v",...}`` by label set (bounded by the process's series)."""
_plain_sample_names: set[str] = set()
"""Sample names already checked against :data:`_PLAIN_NAME`."""
_MAX_CACHED: Final = 100_000


_go_strings: dict[float, str] = {}
"""The client's text of each non-zero value seen (counts, sums, ``_created`` timestamps)."""
_MAX_GO_STRINGS: Final = 50_000


def _go_float(value: float) -> str:
    """``value`` as the client writes it (Go's formatting: ``+Inf``, ``1e+22``), memoised.

    Equal floats other than zero have one text (an ``int`` equal to a float is written as
    that float, as the client does); ``0.0`` and ``-0.0`` are equal keys with different
    texts, so zero is never memoised.
    """
    found = _go_strings.get(value)
    if found is None:
        if value == 0:
            return "-0.0" if copysign(1.0, value) < 0 else "0.0"
        found = _client_go(value)
        if len(_go_strings) >= _MAX_GO_STRINGS:
            _go_strings.clear()
        _go_strings[value] = found
    return found


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


_Row = tuple[str, str, float, Exemplar | None]
"""One sample: its name, its line up to the value (``name{labels} ``), value, exemplar."""


class _Family(NamedTuple):
    """One metric family, as :class:`~prometheus_client.metrics_core.Metric` describes it."""

    name: str
    documentation: str
    type: str
    unit: str
    rows: list[_Row]


def _sample_rows(metric: Metric) -> list[_Row]:
    """The rows of a collected metric's samples."""
    rows: list[_Row] = []
    for sample in metric.samples:
        name = sample.name
        if name not in _plain_sample_names:
            _check_name(name, _PLAIN_NAME, _plain_sample_names)
        if sample.timestamp is not None or sample.native_histogram is not None:
            raise _Unusual(name)
        rows.append((name, name + _labels(sample.labels) + " ", sample.value, sample.exemplar))
    return rows


class _Layout(NamedTuple):
    """A counter's, gauge's or histogram's sample names and, per child, its lines' prefixes."""

    names: tuple[str, ...]
    prefixes: dict[Sequence[str], tuple[str, ...]]


_layouts: WeakKeyDictionary[Collector, _Layout] = WeakKeyDictionary()
"""Per metric object: its series' line prefixes, formatted once (they never change)."""


def _layout(collector: Counter | Gauge | Histogram) -> _Layout:
    found = _layouts.get(collector)
    if found is None:
        name = collector._name
        suffixes = {Counter: ("_total", "_created"), Gauge: ("",)}.get(
            type(collector), ("_bucket", "_count", "_sum", "_created")
        )
        names = tuple(name + suffix for suffix in suffixes)
        for sample_name in names:
            if not _PLAIN_NAME.match(sample_name):
                raise _Unusual(sample_name)
        found = _layouts[collector] = _Layout(names, {})
    return found


def _prefixes(collector: Collector, layout: _Layout, labelvalues: Sequence[str]) -> tuple[str, ...]:
    found = layout.prefixes.get(labelvalues)
    if found is None:
        labels = dict(zip(collector._labelnames, labelvalues, strict=True))  # type: ignore[attr-defined]
        plain = _labels(labels) + " "
        if isinstance(collector, Histogram):
            bucket, count, total, created = layout.names
            buckets = [
                bucket + _labels({**labels, "le": _go_float(bound)}) + " "
                for bound in collector._upper_bounds
            ]
            found = (*buckets, count + plain, total + plain, created + plain)
        else:
            found = tuple(name + plain for name in layout.names)
        if len(layout.prefixes) < _MAX_CACHED:
            layout.prefixes[labelvalues] = found
    return found


def _read_child(
    child: Counter | Gauge | Histogram,
    names: tuple[str, ...],
    prefixes: tuple[str, ...],
    rows: list[_Row],
) -> None:
    """Append ``child``'s samples, as its ``_child_samples`` makes them, to ``rows``."""
    created = client_metrics._use_created
    if isinstance(child, Counter):
        value = child._value
        rows.append((names[0], prefixes[0], value.get(), value.get_exemplar()))
        if created:
            rows.append((names[1], prefixes[1], child._created, None))
    elif isinstance(child, Gauge):
        rows.append((names[0], prefixes[0], child._value.get(), None))
    else:
        acc = 0.0
        buckets = child._buckets
        for bucket, prefix in zip(buckets, prefixes, strict=False):
            acc += bucket.get()
            rows.append((names[0], prefix, acc, bucket.get_exemplar()))
        count, total, created_prefix = prefixes[len(buckets) :]
        rows.append((names[1], count, acc, None))
        if child._upper_bounds[0] >= 0:
            rows.append((names[2], total, child._sum.get(), None))
        if created:
            rows.append((names[3], created_prefix, child._created, None))


def _direct_family(collector: Collector) -> _Family | None:
    """A plain counter's, gauge's or histogram's family read from its children directly.

    ``None`` for anything else (its own ``collect`` is used): other metric types, subclasses,
    a gauge with ``set_function``, multiprocess mode's memory-mapped values.
    """
    if type(collector) not in (Counter, Gauge, Histogram):
        return None
    if client_values.ValueClass is not client_values.MutexValue:
        return None
    metric: Metric = collector._get_metric()  # type: ignore[attr-defined]
    if collector._is_parent():  # type: ignore[attr-defined]
        with collector._lock:  # type: ignore[attr-defined]
            children = list(collector._metrics.items())  # type: ignore[attr-defined]
    else:
        children = [((), collector)]
    layout = _layout(collector)  # type: ignore[arg-type]
    rows: list[_Row] = []
    for labelvalues, child in children:
        if "_child_samples" in vars(child):  # Gauge.set_function
            return None
        _read_child(child, layout.names, _prefixes(collector, layout, labelvalues), rows)
    return _Family(metric.name, metric.documentation, metric.type, metric.unit, rows)


def _collectors(registry: Collector) -> list[Collector] | None:
    """A plain registry's collectors in ``collect()``'s order; ``None`` for any other."""
    if type(registry) is not CollectorRegistry or registry._target_info:
        return None
    with registry._lock:
        return list(registry._collector_to_names)


def _collected(metric: Metric) -> _Family:
    rows = _sample_rows(metric)
    return _Family(metric.name, metric.documentation, metric.type, metric.unit, rows)


def _families(registry: Collector) -> list[_Family]:
    """Every family of ``registry``, in ``registry.collect()``'s order.

    Counters, gauges and histograms of a plain registry are read from their children
    directly: the client's ``collect`` builds a label dict and a ``Sample`` per sample (and
    formats each bucket bound), about half of a scrape's CPU otherwise. The rest is collected.
    """
    collectors = _collectors(registry)
    if collectors is None:
        return [_collected(metric) for metric in registry.collect()]
    families: list[_Family] = []
    for collector in collectors:
        family = _direct_family(collector)
        if family is not None:
            families.append(family)
        else:
            families.extend(_collected(metric) for metric in collector.collect())
    return families


def _text_family(family: _Family, output: list[str]) -> None:
    name, kind = family.name, family.type
    if not _METRIC_NAME.match(name):
        raise _Unusual(name)
    exposed = name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
    help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    output.append(f"# HELP {exposed} {help_text}\n# TYPE {exposed} {_TYPES.get(kind, kind)}\n")
    extra: dict[str, list[str]] = {}
    for sample_name, prefix, value, _ in family.rows:
        line = prefix + _go_float(value) + "\n"
        suffix = sample_name[len(name) :]
        if suffix in _OM_SUFFIXES and sample_name.startswith(name):
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
    try:
        if escaping not in _ESCAPINGS:
            raise _Unusual(escaping)
        for family in _families(registry):
            _text_family(family, output)
    except _Unusual:
        return _client_text(registry, escaping)
    return "".join(output).encode("utf-8")


def _is_valid_exemplar_metric(kind: str, name: str, sample_name: str) -> bool:
    """Where OpenMetrics allows an exemplar (prometheus_client's rule, same order)."""
    if kind == "counter" and sample_name.endswith("_total"):
        return True
    if kind == "gaugehistogram" and sample_name.endswith("_bucket"):
        return True
    return kind == "histogram" and (sample_name.endswith("_bucket") or sample_name == name)


def _exemplar(family: _Family, sample_name: str, exemplar: Exemplar) -> str:
    if not _is_valid_exemplar_metric(family.type, family.name, sample_name):
        raise _Unusual(sample_name)  # the client raises its ValueError
    pairs = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(exemplar.labels.items()))
    text = " # {" + pairs + "} " + _go_float(exemplar.value)
    return text if exemplar.timestamp is None else f"{text} {exemplar.timestamp}"


def _om_family(family: _Family, output: list[str]) -> None:
    name = family.name
    if not _METRIC_NAME.match(name):
        raise _Unusual(name)
    header = f"# HELP {name} {_escape_value(family.documentation)}\n# TYPE {name} {family.type}\n"
    if family.unit:
        header += f"# UNIT {name} {family.unit}\n"
    output.append(header)
    for sample_name, prefix, value, exemplar in family.rows:
        if exemplar is None:
            output.append(prefix + _go_float(value) + "\n")
        else:
            output.append(
                prefix + _go_float(value) + _exemplar(family, sample_name, exemplar) + "\n"
            )


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
    try:
        if escaping not in _ESCAPINGS:
            raise _Unusual(escaping)
        for family in _families(registry):
            _om_family(family, output)
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
