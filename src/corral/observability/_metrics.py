"""Prometheus metrics, registered once per process in the client's default registry.

The names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/): a
counter's exposed name ends in ``_total`` (the client appends it to the name given here).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import Counter

__all__ = [
    "CACHE_HITS",
    "CACHE_HIT_ATTRIBUTE",
    "CACHE_MISSES",
    "CacheKind",
    "count_cache_lookup",
]

CACHE_HIT_ATTRIBUTE = "corral.cache.hit"
"""Span attribute: ``True`` when a ``chat`` or ``execute_tool`` span was answered from a cache,
``False`` when a cache was consulted (or, on ``chat`` spans, could have been) and the model or
tool was called."""

CacheKind = Literal["model", "tool"]
"""Which cache a lookup was made in: the model response cache or the tool-result cache."""

CACHE_HITS = Counter(
    "corral_cache_hits",
    "Lookups answered from a cache (no model or tool call was made).",
    ["kind"],
)
"""``corral_cache_hits_total{kind="model"|"tool"}``."""

CACHE_MISSES = Counter(
    "corral_cache_misses",
    "Cache lookups that found no live entry (the model or tool was called).",
    ["kind"],
)
"""``corral_cache_misses_total{kind="model"|"tool"}``."""


def count_cache_lookup(kind: CacheKind, *, hit: bool) -> None:
    """Count one lookup in the ``kind`` cache as a hit or a miss."""
    (CACHE_HITS if hit else CACHE_MISSES).labels(kind=kind).inc()
