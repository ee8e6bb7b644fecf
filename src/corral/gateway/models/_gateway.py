"""The model gateway: routes ``provider/model`` names to providers and records ``chat`` spans."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from typing import Protocol

from opentelemetry.trace import Status, StatusCode, Tracer

from corral.errors import ModelAPIError, PolicyDenied
from corral.gateway.models import _cache
from corral.gateway.models._base import ModelProvider, ModelRequest, ModelResponse
from corral.observability import CACHE_HIT_ATTRIBUTE

__all__ = ["ModelAuthorizer", "ModelGateway", "split_model_name"]


class ModelAuthorizer(Protocol):
    """Decides whether one model may be called, before the gateway calls it.

    The caller (the runtime) makes and records the ``model.call`` policy decision; the gateway
    only asks, so it never imports policy.
    """

    async def __call__(self, model: str) -> str | None:
        """Decide ``model.call`` for ``model`` (a ``provider/model`` name).

        Returns:
            ``None`` if the model may be called, else why not (the refusal text, for a person).
        """
        ...


def split_model_name(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``.

    Raises:
        ModelAPIError: the name has no ``provider/`` part.
    """
    provider, sep, name = model.partition("/")
    if not sep or not name:
        raise ModelAPIError(
            f"model {model!r} must be named 'provider/model' (e.g. 'local/smollm2-135m')",
            provider=provider or "?",
        )
    return provider, name


class ModelGateway:
    """Sends model calls to providers by the provider part of the model name.

    Args:
        providers: Providers by name (``local``, ``openai``, ``scripted``...).
        tracer: Tracer for ``chat {model}`` spans.
    """

    def __init__(self, providers: Mapping[str, ModelProvider], tracer: Tracer) -> None:
        self.providers = dict(providers)
        self.tracer = tracer
        self.cache: _cache.ResponseCache | None = None
        """The exact-match response cache (set by the platform); ``None``: no caching."""

    async def complete(
        self,
        models: list[str],
        request: ModelRequest,
        *,
        run_id: str | None = None,
        authorize: ModelAuthorizer | None = None,
        tenant_id: str | None = None,
        cache_ttl: timedelta | None = None,
    ) -> tuple[str, ModelResponse]:
        """Call the first model of ``models``; on a provider error, the next (fallback).

        Each model is authorized just before it would be called: a model ``authorize`` refuses
        is skipped (never called) and the next one is tried.

        Args:
            models: ``provider/model`` names: the chosen model, then its fallbacks.
            request: The call; its ``model`` field is replaced per attempt.
            run_id: Run the call belongs to (span attribute).
            authorize: Decides each model before it is called; ``None`` allows every model.
            tenant_id: The calling tenant (scopes the response cache).
            cache_ttl: Opt-in to the exact-match response cache: a deterministic request
                (temperature 0 or a seed) is answered from the tenant's cache when it can be,
                and a fresh answer is kept this long. ``None``: the cache is not used.

        Returns:
            ``(model name that answered, response)``.

        Raises:
            ModelAPIError: no model answered and at least one failed (the last error; its message
                names the models skipped by policy), or a provider is not configured.
            PolicyDenied: ``authorize`` refused every model (code ``model_denied``; the first
                refusal's text).
        """
        found = await self._cached(models, request, tenant_id, cache_ttl, run_id, authorize)
        if found is not None and found.hit is not None:
            return found.hit.model, found.hit.response
        last: ModelAPIError | None = None
        refused: list[tuple[str, str]] = []
        for model in models:
            refusal = None if authorize is None else await authorize(model)
            if refusal is not None:
                refused.append((model, refusal))
                continue
            try:
                response = await self._complete_one(model, request, run_id)
            except ModelAPIError as exc:
                last = exc
                continue
            await _cache.remember(self.cache, found, model, response)
            return model, response
        if last is None:
            assert refused, "models must not be empty"
            raise PolicyDenied(refused[0][1], code="model_denied")
        if refused:
            skipped = ", ".join(model for model, _ in refused)
            raise ModelAPIError(
                f"{last.message} (not tried, denied by policy: {skipped})",
                provider=last.provider,
                status_code=last.status_code,
            ) from last
        raise last

    async def _cached(
        self,
        models: list[str],
        request: ModelRequest,
        tenant_id: str | None,
        ttl: timedelta | None,
        run_id: str | None,
        authorize: ModelAuthorizer | None,
    ) -> _cache.CacheLookup | None:
        """Look the request up in the response cache; a hit gets its ``chat`` span here."""
        found = await _cache.lookup(self.cache, tenant_id, models, request, ttl, authorize)
        if found is not None and found.hit is not None:
            _cache.record_hit_span(self.tracer, found.hit, run_id)
        return found

    async def _complete_one(
        self, model: str, request: ModelRequest, run_id: str | None
    ) -> ModelResponse:
        provider_name, name = split_model_name(model)
        with self.tracer.start_as_current_span(f"chat {name}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", provider_name)
            span.set_attribute("gen_ai.request.model", name)
            span.set_attribute(CACHE_HIT_ATTRIBUTE, False)
            if run_id:
                span.set_attribute("corral.run.id", run_id)
            if request.max_output_tokens:
                span.set_attribute("gen_ai.request.max_tokens", request.max_output_tokens)
            span.set_attribute("gen_ai.request.temperature", request.temperature)
            provider = self.providers.get(provider_name)
            try:
                if provider is None:
                    raise ModelAPIError(
                        f"model provider {provider_name!r} is not configured; configured: "
                        f"{', '.join(sorted(self.providers)) or 'none'}",
                        provider=provider_name,
                    )
                response = await provider.complete(dataclasses.replace(request, model=name))
            except ModelAPIError as exc:
                span.set_attribute("error.type", exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.message))
                raise
            span.set_attribute("gen_ai.response.model", response.response_model or name)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.output_tokens)
            if response.decision is None:
                span.set_attribute("error.type", "invalid_decision")
            return response
