"""The model gateway: routes ``provider/model`` names to providers and records ``chat`` spans."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from opentelemetry.trace import Status, StatusCode, Tracer

from corral.errors import ModelAPIError
from corral.gateway.models._base import ModelProvider, ModelRequest, ModelResponse

__all__ = ["ModelGateway", "split_model_name"]


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

    async def complete(
        self, models: list[str], request: ModelRequest, *, run_id: str | None = None
    ) -> tuple[str, ModelResponse]:
        """Call the first model of ``models``; on a provider error, the next (fallback).

        Args:
            models: ``provider/model`` names: the chosen model, then its fallbacks.
            request: The call; its ``model`` field is replaced per attempt.
            run_id: Run the call belongs to (span attribute).

        Returns:
            ``(model name that answered, response)``.

        Raises:
            ModelAPIError: every model failed (the last error), or a provider is not configured.
        """
        last: ModelAPIError | None = None
        for model in models:
            try:
                return model, await self._complete_one(model, request, run_id)
            except ModelAPIError as exc:
                last = exc
        assert last is not None, "models must not be empty"
        raise last

    async def _complete_one(
        self, model: str, request: ModelRequest, run_id: str | None
    ) -> ModelResponse:
        provider_name, name = split_model_name(model)
        with self.tracer.start_as_current_span(f"chat {name}") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.provider.name", provider_name)
            span.set_attribute("gen_ai.request.model", name)
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
