"""Caches shared by every worker and replica: model responses and read-only tool results.

The gateways define what is cached and under which key (``corral.gateway.models.ResponseCache``,
``corral.gateway.tools.ToolResultCache``); this package keeps the entries in the store, and the
platform wires them in.
"""

from corral.cache._store import StoreResponseCache, StoreToolResultCache
from corral.cache._tables import ModelResponseCacheRow, ToolResultCacheRow

__all__ = [
    "ModelResponseCacheRow",
    "StoreResponseCache",
    "StoreToolResultCache",
    "ToolResultCacheRow",
]
