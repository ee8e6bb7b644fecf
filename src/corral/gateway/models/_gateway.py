"""The model gateway: model names -> deployments -> providers, with retries, breakers, failover.

One call of :meth:`ModelGateway.complete` walks the caller's model names (the chosen model,
then its fallbacks). Each name resolves to deployments (:mod:`._routing`): a tenant's ``Model``
alias, the platform's default set, or a ``provider/model`` name as its own deployment. The
deployments outside the caller's data residency are dropped; the rest are tried in region
preference order, weighted among healthy ones. Each is authorized just before it is called;
retryable errors are retried with full jitter; a failure moves on to the next deployment (a
failover), then to the next name. Every response says which deployment served it and what
was tried before (:attr:`ModelResponse.attempts`), so the runtime can audit the failovers.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from prometheus_client import Counter

from corral.errors import ModelAPIError, NotFound, PolicyDenied
from corral.gateway.models import _cache
from corral.gateway.models._base import (
    Attempt,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    Served,
)
from corral.gateway.models._resilience import (
    RetryPolicy,
    call_with_retries,
    counts_as_failure,
)
from corral.gateway.models._routing import Deployment, ModelCatalog, ModelResolver, route
from corral.observability import CACHE_HIT_ATTRIBUTE, REGISTRY, observe_model_call
from corral.resilience import CircuitBreakers

__all__ = [
    "FAILOVERS",
    "ModelAuthorizer",
    "ModelCallScope",
    "ModelGateway",
    "SecretRenderer",
    "current_model_call",
    "split_model_name",
]

FAILOVERS = Counter(
    "corral_model_failovers",
    "Model deployments skipped or failed before another one was tried, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
"""``corral_model_failovers_total{outcome="failed|circuit_open|denied|outside_residency"}``."""


@dataclasses.dataclass(frozen=True)
class ModelCallScope:
    """Whose model call a provider is answering (see :func:`current_model_call`).

    Attributes:
        tenant_id: The calling tenant, or ``None`` (a call outside any tenant).
        run_id: The calling run, or ``None`` (a call outside a managed run).
    """

    tenant_id: str | None
    run_id: str | None


_NO_CALL = ModelCallScope(None, None)
_CURRENT_CALL: contextvars.ContextVar[ModelCallScope | None] = contextvars.ContextVar(
    "corral_model_call", default=None
)


def current_model_call() -> ModelCallScope:
    """The tenant and run of the model call in progress (both ``None`` outside one).

    For providers that answer per run: the replay provider serves a run only its own
    tenant's recorded outputs.
    """
    return _CURRENT_CALL.get() or _NO_CALL


SecretRenderer = Callable[[str, str], Awaitable[str]]
"""``await render(tenant_id, "${secret:NAME}")`` -> the secret's value (the credential broker)."""


class ModelAuthorizer(Protocol):
    """Decides whether one deployment may be called, before the gateway calls it.

    The caller (the runtime) makes and records the ``model.call`` policy decision; the gateway
    only asks, so it never imports policy.
    """

    async def __call__(self, model: str, served: Served | None = None) -> str | None:
        """Decide ``model.call`` for ``model`` served by ``served``.

        Args:
            model: The deployment's ``provider/model`` name.
            served: The deployment (alias, deployment name, region...).

        Returns:
            ``None`` if the deployment may be called, else why not (the refusal text).
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


class _Outcome:
    """What one :meth:`ModelGateway.complete` call has tried so far."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.failures: list[tuple[str, ModelAPIError]] = []
        self.refused: list[tuple[str, str]] = []

    def add(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        FAILOVERS.labels(attempt.outcome).inc()

    def error(self) -> ModelAPIError | PolicyDenied:
        """The error of a call no deployment answered."""
        if not self.failures:
            if self.refused and not any(a.outcome != "denied" for a in self.attempts):
                return PolicyDenied(self.refused[0][1], code="model_denied")
            skipped = "; ".join(a.error for a in self.attempts if a.outcome != "denied")
            message = f"no model deployment could be tried: {skipped}"
            provider = self.attempts[0].served.provider if self.attempts else "?"
            return ModelAPIError(self._with_refusals(message), provider=provider)
        last = self.failures[-1][1]
        if len(self.failures) == 1:
            message = last.message
        else:
            message = "every model deployment failed: " + "; ".join(
                f"{n}: {e.message}" for n, e in self.failures
            )
        passed = [a for a in self.attempts if a.outcome in ("circuit_open", "outside_residency")]
        if passed:
            message += f" (skipped: {'; '.join(a.error for a in passed)})"
        return ModelAPIError(
            self._with_refusals(message), provider=last.provider, status_code=last.status_code
        )

    def _with_refusals(self, message: str) -> str:
        if not self.refused:
            return message
        return f"{message} (not tried, denied by policy: {', '.join(m for m, _ in self.refused)})"


class ModelGateway:
    """Sends model calls to deployments of model names, with retries, breakers and failover.

    Args:
        providers: Configured providers by name (``local``, ``openai``, ``scripted``...).
        tracer: Tracer for ``chat {model}`` spans.
        catalog: Resolves model names per tenant (``None``: ``provider/model`` names only).
        region: This process's region (``CORRAL_REGION``): its deployments are preferred.
        breakers: Circuit breakers per deployment (tests pass one with their own clock).
        retry: Backoff bounds of retries.
        rng: Source of the weighted choice and the jitter (tests pass a seeded one).
        sleep: Waits between retries (tests pass one that records and returns).
        secrets: Resolves a deployment's ``${secret:NAME}`` api key for a tenant.
    """

    def __init__(
        self,
        providers: Mapping[str, ModelProvider],
        tracer: Tracer,
        *,
        catalog: ModelResolver | None = None,
        region: str | None = None,
        breakers: CircuitBreakers | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        secrets: SecretRenderer | None = None,
    ) -> None:
        self.providers = dict(providers)
        self.tracer = tracer
        self.catalog: ModelResolver = catalog or ModelCatalog()
        self.region = region
        self.breakers = breakers or CircuitBreakers()
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()  # routing and jitter, not cryptography
        self.sleep = sleep
        self.secrets = secrets
        self._own: dict[tuple[str, ...], ModelProvider] = {}
        self.cache: _cache.ResponseCache | None = None
        """The exact-match response cache (set by the platform); ``None``: no caching."""

    @property
    def deployment_providers(self) -> list[ModelProvider]:
        """Providers built for deployments with their own endpoint or key (to close)."""
        return list(self._own.values())

    async def complete(
        self,
        models: Sequence[str],
        request: ModelRequest,
        *,
        run_id: str | None = None,
        authorize: ModelAuthorizer | None = None,
        tenant_id: str | None = None,
        residency: Sequence[str] | None = None,
        cache_ttl: timedelta | None = None,
    ) -> tuple[str, ModelResponse]:
        """Call the first deployment that answers, walking ``models`` and their deployments.

        Args:
            models: Model names (aliases or ``provider/model``): the chosen model, then its
                fallbacks.
            request: The call; its ``model`` (and decoding overrides) are set per deployment.
            run_id: Run the call belongs to (span attribute).
            authorize: Decides each deployment just before it is called; ``None`` allows all.
            tenant_id: Tenant whose ``Model`` aliases apply.
            residency: Regions the caller's deployments must be in (``None``: any).
            cache_ttl: Opt-in to the exact-match response cache: a deterministic request
                (temperature 0 or a seed) is answered from the tenant's cache when it can be,
                and a fresh answer is kept this long. ``None``: the cache is not used.

        Returns:
            ``(provider/model of the deployment that answered, response)``; the response's
            ``served`` names the deployment and ``attempts`` what was tried before it.

        Raises:
            NotFound: the first name is an alias nobody defines (code
                ``model_alias_not_found``, naming the known aliases).
            ModelAPIError: no deployment answered: the one failure's error, or one naming
                every deployment that failed, and those skipped (breaker open, residency) or
                denied by policy.
            PolicyDenied: ``authorize`` refused every deployment it was asked about and none
                was skipped otherwise (code ``model_denied``; the first refusal's text).
        """
        found = await self._cached(models, request, tenant_id, cache_ttl, run_id, authorize)
        if found is not None and found.hit is not None:
            return found.hit.model, found.hit.response
        outcome = _Outcome()
        for index, name in enumerate(models):
            try:
                deployments = await self.catalog.resolve(tenant_id, name)
            except NotFound as exc:
                if index == 0:
                    raise
                outcome.failures.append((name, ModelAPIError(exc.message, provider="?")))
                continue
            ordered, dropped = route(
                deployments,
                region=self.region,
                residency=residency,
                healthy=lambda d: self.breakers.state(d.breaker_key) != "open",
                rng=self.rng,
            )
            for attempt in dropped:
                outcome.add(attempt)
            for deployment in ordered:
                response = await self._try(
                    deployment, request, outcome, run_id, authorize, tenant_id
                )
                if response is not None:
                    served = deployment.served()
                    response = dataclasses.replace(
                        response, served=served, attempts=tuple(outcome.attempts)
                    )
                    await _cache.remember(self.cache, found, deployment.model_name, response)
                    return deployment.model_name, response
        raise outcome.error()

    async def _cached(
        self,
        models: Sequence[str],
        request: ModelRequest,
        tenant_id: str | None,
        ttl: timedelta | None,
        run_id: str | None,
        authorize: ModelAuthorizer | None,
    ) -> _cache.CacheLookup | None:
        """Look the request up in the response cache; a hit gets its ``chat`` span here."""
        found = await _cache.lookup(self.cache, tenant_id, list(models), request, ttl, authorize)
        if found is not None and found.hit is not None:
            _cache.record_hit_span(self.tracer, found.hit, run_id)
        return found

    async def _try(
        self,
        deployment: Deployment,
        request: ModelRequest,
        outcome: _Outcome,
        run_id: str | None,
        authorize: ModelAuthorizer | None,
        tenant_id: str | None,
    ) -> ModelResponse | None:
        """One deployment: breaker, policy, the call with retries; ``None`` to move on."""
        served, key = deployment.served(), deployment.breaker_key
        if self.breakers.state(key) == "open":
            outcome.add(Attempt(served, "circuit_open", self._open_text(deployment)))
            return None
        if authorize is not None:
            refusal = await authorize(deployment.model_name, served)
            if refusal is not None:
                outcome.refused.append((deployment.model_name, refusal))
                outcome.add(Attempt(served, "denied", refusal))
                return None
        if not (await self.breakers.acquire(key)).allowed:  # another call took the half-open trial
            outcome.add(Attempt(served, "circuit_open", self._open_text(deployment)))
            return None
        try:
            return await self._call(deployment, request, run_id, tenant_id)
        except ModelAPIError as exc:
            outcome.failures.append((deployment.name, exc))
            outcome.add(Attempt(served, "failed", exc.message))
            return None

    def _open_text(self, deployment: Deployment) -> str:
        return (
            f"deployment {deployment.name!r} ({deployment.model_name}) is skipped: its circuit "
            f"breaker opened after {self.breakers.failure_threshold} consecutive failures"
        )

    async def _call(
        self,
        deployment: Deployment,
        request: ModelRequest,
        run_id: str | None,
        tenant_id: str | None,
    ) -> ModelResponse:
        """Call one deployment, retrying retryable errors; keeps its breaker."""
        key = deployment.breaker_key
        tries = 0

        async def attempt() -> ModelResponse:
            nonlocal tries
            tries += 1
            if tries > 1 and self.breakers.state(key) == "open":
                raise ModelAPIError(self._open_text(deployment), provider=deployment.provider)
            try:
                response = await self._call_once(deployment, request, run_id, tenant_id)
            except ModelAPIError as exc:
                if counts_as_failure(exc):
                    await self.breakers.record_failure(key)
                else:
                    await self.breakers.record_success(key)  # it answered; the request was refused
                raise
            await self.breakers.record_success(key)
            return response

        try:
            return await call_with_retries(
                attempt,
                retries=deployment.max_retries,
                policy=self.retry,
                rng=self.rng,
                sleep=self.sleep,
            )
        except BaseException:
            await self.breakers.release(key)
            raise

    async def _call_once(
        self,
        deployment: Deployment,
        request: ModelRequest,
        run_id: str | None,
        tenant_id: str | None,
    ) -> ModelResponse:
        with self.tracer.start_as_current_span(f"chat {deployment.model}") as span:
            attributes: dict[str, AttributeValue] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": deployment.provider,
                "gen_ai.request.model": deployment.model,
                "corral.model.alias": deployment.alias,
                CACHE_HIT_ATTRIBUTE: False,
                "corral.model.deployment": deployment.name,
            }
            if deployment.region:
                attributes["corral.model.region"] = deployment.region
            if run_id:
                attributes["corral.run.id"] = run_id
            if request.max_output_tokens:
                attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
            span.set_attributes(attributes)  # one lock and call for all, same order
            started = time.perf_counter()
            scope = _CURRENT_CALL.set(ModelCallScope(tenant_id, run_id))
            try:
                provider, own = await self._provider(deployment, tenant_id)
                sent = deployment.apply(request)
                span.set_attribute("gen_ai.request.temperature", sent.temperature)
                if own:  # built with the deployment's timeout
                    response = await provider.complete(sent)
                else:
                    response = await self._with_timeout(provider, sent, deployment)
            except ModelAPIError as exc:
                observe_model_call(
                    deployment.provider, deployment.model, time.perf_counter() - started
                )
                span.set_attribute("error.type", exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.message))
                raise
            finally:
                _CURRENT_CALL.reset(scope)
            observe_model_call(
                deployment.provider,
                deployment.model,
                time.perf_counter() - started,
                usage=response.usage,
            )
            span.set_attributes(
                {
                    "gen_ai.response.model": response.response_model or deployment.model,
                    "gen_ai.usage.input_tokens": response.usage.input_tokens,
                    "gen_ai.usage.output_tokens": response.usage.output_tokens,
                }
            )
            if response.decision is None:
                span.set_attribute("error.type", "invalid_decision")
            return response

    async def _with_timeout(
        self, provider: ModelProvider, request: ModelRequest, deployment: Deployment
    ) -> ModelResponse:
        if deployment.timeout_seconds is None:
            return await provider.complete(request)
        try:
            async with asyncio.timeout(deployment.timeout_seconds):
                return await provider.complete(request)
        except TimeoutError:
            raise ModelAPIError(
                f"deployment {deployment.name!r} ({deployment.model_name}) did not answer within "
                f"{deployment.timeout_seconds} s (timeout_seconds of the deployment)",
                provider=deployment.provider,
                retryable=True,
            ) from None

    async def _provider(
        self, deployment: Deployment, tenant_id: str | None
    ) -> tuple[ModelProvider, bool]:
        """The configured provider, or one built for the deployment's own endpoint or key.

        Returns:
            ``(provider, built for deployments)``.
        """
        if deployment.base_url is None and deployment.api_key is None:
            provider = self.providers.get(deployment.provider)
            if provider is None and deployment.provider == "anthropic":
                provider = self._build(deployment, None)
                self.providers["anthropic"] = provider
            if provider is None:
                raise ModelAPIError(
                    f"model provider {deployment.provider!r} is not configured; configured: "
                    f"{', '.join(sorted(self.providers)) or 'none'}",
                    provider=deployment.provider,
                )
            return provider, False
        key: str | None = None
        if deployment.api_key is not None:
            if self.secrets is None or tenant_id is None:
                raise ModelAPIError(
                    f"deployment {deployment.name!r} references {deployment.api_key} but this "
                    "gateway has no credential broker (or no tenant); configure one",
                    provider=deployment.provider,
                )
            try:
                key = await self.secrets(tenant_id, deployment.api_key)
            except Exception as exc:  # NotFound, PolicyDenied, InvalidRequest from the broker
                message = getattr(exc, "message", str(exc))
                raise ModelAPIError(
                    f"deployment {deployment.name!r}: its api_key {deployment.api_key} cannot be "
                    f"resolved: {message}",
                    provider=deployment.provider,
                ) from exc
        digest = hashlib.sha256((key or "").encode()).hexdigest()
        cache_key = (
            deployment.provider,
            deployment.base_url or "",
            digest,
            str(deployment.timeout_seconds),
            str(deployment.tool_calling),
        )
        provider = self._own.get(cache_key)
        if provider is None:
            provider = self._own[cache_key] = self._build(deployment, key)
        return provider, True

    def _build(self, deployment: Deployment, key: str | None) -> ModelProvider:
        timeout = deployment.timeout_seconds or 120.0
        if deployment.provider == "anthropic":
            from corral.gateway.models._anthropic import AnthropicProvider

            return AnthropicProvider(
                "anthropic", base_url=deployment.base_url, api_key=key, timeout_seconds=timeout
            )
        # Imported on first use: the openai SDK is ~500 modules.
        from corral.gateway.models._openai import OpenAICompatibleProvider

        return OpenAICompatibleProvider(
            deployment.provider,
            base_url=deployment.base_url,
            api_key=key if key is not None else os.environ.get("OPENAI_API_KEY", "unset"),
            tool_calling="native" if deployment.tool_calling else "json",
            timeout_seconds=timeout,
        )
