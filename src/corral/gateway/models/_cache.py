"""The exact-match model response cache: its protocol, its key and its entries.

A response is cached only for a *deterministic* request (temperature 0 or a fixed ``seed``)
and only when the caller opts in with a time to live (an agent's
``spec.model.cache_ttl_seconds``, or a model alias's setting). The key is the SHA-256 of the
canonical JSON (:func:`corral.audit.canonical_json`) of the tenant, the model names asked for
and every field of :class:`ModelRequest` except the per-attempt ``model``: messages, tools,
temperature, seed, token and answer caps, penalties, and any field added later, so a field
that changes the output can never be left out of the key by mistake.

The tenant is part of the key *and* of the entry (a column): a tenant never reads another's
entries, even with the same digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.trace import Tracer

from corral.audit import canonical_json
from corral.gateway.models._base import (
    Decision,
    FinalAnswer,
    ModelRequest,
    ModelResponse,
    Price,
    Served,
    ToolCall,
    Usage,
)
from corral.observability import CACHE_HIT_ATTRIBUTE, count_cache_lookup

__all__ = [
    "CacheLookup",
    "CachedResponse",
    "ResponseCache",
    "is_deterministic",
    "lookup",
    "record_hit_span",
    "remember",
    "response_cache_digest",
    "response_document",
    "response_from_document",
]

log = logging.getLogger(__name__)

_KEY_VERSION = 1
"""Part of every key: bump it when the entry format changes, so old entries stop matching."""


@dataclass(frozen=True)
class CachedResponse:
    """A cache entry: the ``provider/model`` name that answered and its response."""

    model: str
    response: ModelResponse


class ResponseCache(Protocol):
    """Where cached model responses live (implemented over the store by ``corral.cache``)."""

    async def get(self, tenant_id: str, digest: str) -> CachedResponse | None:
        """The tenant's live entry under ``digest``, or ``None`` (absent or expired)."""
        ...

    async def put(
        self, tenant_id: str, digest: str, entry: CachedResponse, *, ttl: timedelta
    ) -> None:
        """Store ``entry`` for ``ttl`` from now, replacing any entry under ``digest``."""
        ...


def is_deterministic(request: ModelRequest) -> bool:
    """Whether ``request`` may be answered from the cache: temperature 0 or a fixed seed."""
    return request.temperature == 0 or request.seed is not None


def response_cache_digest(tenant_id: str, models: list[str], request: ModelRequest) -> str:
    """The cache key of ``request`` for ``tenant_id``: SHA-256 hex of its canonical JSON.

    Args:
        tenant_id: The tenant (part of the key, so equal requests of two tenants differ).
        models: The model names asked for, in order (the chosen one, then its fallbacks).
        request: The request; every field but ``model`` (replaced per attempt) is keyed.

    Returns:
        64 hex digits.
    """
    fields = dataclasses.asdict(request)
    fields.pop("model")
    document = {"v": _KEY_VERSION, "tenant": tenant_id, "models": models, "request": fields}
    return hashlib.sha256(canonical_json(document)).hexdigest()


def _decision_document(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    if isinstance(decision, FinalAnswer):
        if decision.sources:
            return {"final_answer": decision.text, "sources": list(decision.sources)}
        return {"final_answer": decision.text}
    return {"tool_calls": [dataclasses.asdict(call) for call in decision]}


def _decision(document: dict[str, Any] | None) -> Decision | None:
    if document is None:
        return None
    if "final_answer" in document:
        return FinalAnswer(document["final_answer"], tuple(document.get("sources", ())))
    return [ToolCall(c["id"], c["name"], c["arguments"]) for c in document["tool_calls"]]


def _price_document(price: Price | None) -> dict[str, str | None] | None:
    if price is None:
        return None
    return {k: None if v is None else str(v) for k, v in dataclasses.asdict(price).items()}


def _price(document: dict[str, str | None] | None) -> Price | None:
    if document is None:
        return None
    values = {k: None if v is None else Decimal(v) for k, v in document.items()}
    return Price(**values)  # type: ignore[arg-type]


def response_document(entry: CachedResponse) -> dict[str, Any]:
    """``entry`` as a JSON object (the stored form; prices as decimal strings).

    The cost is not stored: a response served from the cache costs nothing.
    """
    response = entry.response
    served = response.served
    return {
        "model": entry.model,
        "decision": _decision_document(response.decision),
        "raw": response.raw,
        "usage": dataclasses.asdict(response.usage),
        "error": response.error,
        "response_model": response.response_model,
        "served": None
        if served is None
        else {**dataclasses.asdict(served), "price": _price_document(served.price)},
    }


def response_from_document(document: dict[str, Any]) -> CachedResponse:
    """The entry :func:`response_document` stored, as a cache hit.

    The response has ``cache_hit=True``, ``cost_usd=Decimal(0)`` and zero usage (no tokens
    were spent on it); the original token counts are not reported again.
    """
    served = document["served"]
    response = ModelResponse(
        decision=_decision(document["decision"]),
        raw=document["raw"],
        usage=Usage(),
        error=document["error"],
        response_model=document["response_model"],
        served=None if served is None else Served(**{**served, "price": _price(served["price"])}),
        cost_usd=Decimal(0),
        cache_hit=True,
    )
    return CachedResponse(document["model"], response)


@dataclass
class CacheLookup:
    """One request's lookup in the response cache (see :func:`lookup`).

    Attributes:
        digest: The request's key.
        ttl: How long an answer is kept.
        hit: The cached entry, when there was one the caller may use.
    """

    tenant_id: str
    digest: str
    ttl: timedelta
    hit: CachedResponse | None = None


async def lookup(
    cache: ResponseCache | None,
    tenant_id: str | None,
    models: list[str],
    request: ModelRequest,
    ttl: timedelta | None,
    authorize: Callable[[str], Awaitable[str | None]] | None = None,
) -> CacheLookup | None:
    """Look ``request`` up, when caching applies to it; count the hit or miss.

    A cached answer of a model ``authorize`` now refuses is not used (a miss): the gateway
    then tries the models as usual, each decided as it is reached.

    Returns:
        ``None`` when the request is not cached at all (no cache, no tenant, no ``ttl``, or
        not deterministic); else the lookup, with ``hit`` set on a usable hit.
    """
    if cache is None or tenant_id is None or ttl is None or not is_deterministic(request):
        return None
    digest = response_cache_digest(tenant_id, models, request)
    try:
        found = await cache.get(tenant_id, digest)
    except Exception:  # a cache that cannot answer is a miss, never a failed call
        log.warning("response cache lookup failed; calling the model", exc_info=True)
        found = None
    if found is not None and authorize is not None and await authorize(found.model) is not None:
        found = None
    count_cache_lookup("model", hit=found is not None)
    return CacheLookup(tenant_id, digest, ttl, found)


def record_hit_span(tracer: Tracer, hit: CachedResponse, run_id: str | None) -> None:
    """The ``chat {model}`` span of a call answered from the cache (no provider was called)."""
    provider, _, name = hit.model.partition("/")
    with tracer.start_as_current_span(f"chat {name}") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.provider.name", provider)
        span.set_attribute("gen_ai.request.model", name)
        span.set_attribute(CACHE_HIT_ATTRIBUTE, True)
        if run_id:
            span.set_attribute("corral.run.id", run_id)
        span.set_attribute("gen_ai.response.model", hit.response.response_model or name)
        span.set_attribute("gen_ai.usage.input_tokens", 0)
        span.set_attribute("gen_ai.usage.output_tokens", 0)


async def remember(
    cache: ResponseCache | None, found: CacheLookup | None, model: str, response: ModelResponse
) -> None:
    """Store a provider's answer under its lookup's key (a parsed decision only).

    An unparseable reply is not cached: the next identical request asks the model again.
    """
    if cache is None or found is None or response.decision is None:
        return
    entry = CachedResponse(model, response)
    try:
        await cache.put(found.tenant_id, found.digest, entry, ttl=found.ttl)
    except Exception:  # the answer stands; only its reuse is lost
        log.warning("response cache write failed; the answer is not cached", exc_info=True)
