"""Model aliases over deployments: resolution, residency, region preference, weighted choice.

A model name is an alias (``default``, ``fast``: a tenant's ``Model`` document, else the
platform's default set) or a ``provider/model`` name, which is its own single deployment.
:class:`ModelCatalog` resolves names per tenant through a short-lived cache, so a warm call
reads no store. :func:`route` orders an alias's deployments for one call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from corral.contracts import ModelSpec
from corral.errors import NotFound
from corral.gateway.models._base import Attempt, ModelRequest, Price, Served

__all__ = [
    "Deployment",
    "ModelCatalog",
    "ModelResolver",
    "TenantModelsLoader",
    "deployments_of",
    "route",
]


@dataclass(frozen=True)
class Deployment:
    """One place a model name can be served from.

    Attributes:
        alias: The name callers use (an alias, or the ``provider/model`` name itself).
        name: The deployment's name: ``provider/model`` for a ``provider/model`` name,
            ``alias#index`` for an alias's deployment.
        provider: Provider name (``openai``, ``anthropic``, ``local``, ``scripted``...).
        model: The provider's model name.
        base_url: The deployment's own endpoint, or ``None`` for the provider's.
        api_key: The deployment's own key as a ``${secret:NAME}`` reference, or ``None``.
        region: Region label, if any.
        weight: Share of traffic among deployments of equal preference.
        price: Price override (USD per million tokens), if any.
        temperature: Decoding override, if any (so are the three below).
        repeat_penalty: llama.cpp repetition penalty override.
        frequency_penalty: OpenAI frequency penalty override.
        max_answer_chars: Final-answer length cap override.
        timeout_seconds: Seconds one attempt may take, or ``None`` for the provider's.
        max_retries: Retries of retryable errors before falling back.
        tool_calling: Native tool calling (else the JSON-decision mode, for providers
            built for the deployment).
    """

    alias: str
    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key: str | None = None
    region: str | None = None
    weight: int = 1
    price: Price | None = None
    temperature: float | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    max_answer_chars: int | None = None
    timeout_seconds: float | None = None
    max_retries: int = 0
    tool_calling: bool = True

    @property
    def model_name(self) -> str:
        """``provider/model``: what the step records and ``model.call`` is decided on."""
        return f"{self.provider}/{self.model}"

    @property
    def breaker_key(self) -> str:
        """The upstream whose health a breaker tracks (shared by tenants using it)."""
        return f"{self.provider}|{self.base_url or ''}|{self.model}"

    def served(self) -> Served:
        """The :class:`Served` record of a response from this deployment."""
        return Served(
            alias=self.alias,
            deployment=self.name,
            provider=self.provider,
            model=self.model,
            region=self.region,
            price=self.price,
        )

    def apply(self, request: ModelRequest) -> ModelRequest:
        """``request`` for this deployment: its model name and decoding overrides."""
        changes: dict[str, object] = {"model": self.model}
        for name in ("temperature", "repeat_penalty", "frequency_penalty", "max_answer_chars"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value
        return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def deployments_of(alias: str, spec: ModelSpec) -> list[Deployment]:
    """The deployments of a ``Model`` document's spec, in document order."""
    out: list[Deployment] = []
    for index, item in enumerate(spec.deployments):
        prices, decoding = item.prices, item.decoding
        out.append(
            Deployment(
                alias=alias,
                name=f"{alias}#{index}",
                provider=item.provider,
                model=item.model,
                base_url=item.base_url,
                api_key=item.api_key,
                region=item.region,
                weight=item.weight,
                price=None
                if prices is None
                else Price(
                    prices.input_usd_per_mtok,
                    prices.output_usd_per_mtok,
                    prices.cache_read_usd_per_mtok,
                    prices.cache_write_usd_per_mtok,
                ),
                temperature=None if decoding is None else decoding.temperature,
                repeat_penalty=None if decoding is None else decoding.repeat_penalty,
                frequency_penalty=None if decoding is None else decoding.frequency_penalty,
                max_answer_chars=None if decoding is None else decoding.max_answer_chars,
                timeout_seconds=item.timeout_seconds,
                max_retries=item.max_retries,
                tool_calling=item.capabilities.tool_calling,
            )
        )
    return out


def _direct(name: str) -> list[Deployment] | None:
    provider, sep, model = name.partition("/")
    if not sep:
        return None
    return [Deployment(alias=name, name=name, provider=provider, model=model)]


class ModelResolver(Protocol):
    """Resolves a model name to deployments for a tenant (:class:`ModelCatalog` is one)."""

    async def resolve(self, tenant_id: str | None, name: str) -> list[Deployment]:
        """The deployments of ``name`` (an alias or ``provider/model``), in document order.

        Raises:
            NotFound: an unknown alias (code ``model_alias_not_found``).
        """
        ...


TenantModelsLoader = Callable[[str], Awaitable[Mapping[str, ModelSpec]]]
"""Loads a tenant's ``Model`` specs by alias (the platform reads the registry)."""


@dataclass
class _Entry:
    expires_at: float
    specs: dict[str, ModelSpec]
    deployments: dict[str, list[Deployment]]


class ModelCatalog:
    """Resolves model names to deployments per tenant, with a short-lived cache.

    A tenant's ``Model`` documents override the platform's default set alias by alias.

    Args:
        load: Reads a tenant's ``Model`` specs (``None``: no tenant has any).
        defaults: The platform's default set, alias -> spec.
        ttl_seconds: How long a tenant's aliases are cached.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        load: TenantModelsLoader | None = None,
        *,
        defaults: Mapping[str, ModelSpec] | None = None,
        ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load = load
        self.defaults = dict(defaults or {})
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._default_deployments = {a: deployments_of(a, s) for a, s in self.defaults.items()}
        self._tenants: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def invalidate(self, tenant_id: str | None = None) -> None:
        """Forget the cached aliases of one tenant (after an apply), or of all."""
        if tenant_id is None:
            self._tenants.clear()
        else:
            self._tenants.pop(tenant_id, None)

    async def _entry(self, tenant_id: str | None) -> _Entry | None:
        if tenant_id is None or self.load is None:
            return None
        entry = self._tenants.get(tenant_id)
        if entry is not None and entry.expires_at > self.clock():
            return entry
        lock = self._locks.setdefault(tenant_id, asyncio.Lock())
        async with lock:  # one load per tenant when the cache runs out
            entry = self._tenants.get(tenant_id)
            if entry is not None and entry.expires_at > self.clock():
                return entry
            specs = dict(await self.load(tenant_id))
            entry = _Entry(
                self.clock() + self.ttl_seconds,
                specs,
                {alias: deployments_of(alias, spec) for alias, spec in specs.items()},
            )
            self._tenants[tenant_id] = entry
            return entry

    async def aliases(
        self, tenant_id: str | None
    ) -> dict[str, tuple[ModelSpec, Literal["tenant", "platform"]]]:
        """Every alias the tenant can use: its spec and where it comes from, sorted by alias."""
        entry = await self._entry(tenant_id)
        found: dict[str, tuple[ModelSpec, Literal["tenant", "platform"]]] = {
            alias: (spec, "platform") for alias, spec in self.defaults.items()
        }
        if entry is not None:
            found.update({alias: (spec, "tenant") for alias, spec in entry.specs.items()})
        return dict(sorted(found.items()))

    async def resolve(self, tenant_id: str | None, name: str) -> list[Deployment]:
        """The deployments of a model name, in document order.

        Args:
            tenant_id: The tenant whose ``Model`` documents apply (``None``: defaults only).
            name: An alias or a ``provider/model`` name.

        Returns:
            At least one deployment.

        Raises:
            NotFound: ``name`` is an alias neither the tenant nor the platform defines
                (code ``model_alias_not_found``; the message names the known aliases).
        """
        direct = _direct(name)
        if direct is not None:
            return direct
        entry = await self._entry(tenant_id)
        if entry is not None and name in entry.deployments:
            return entry.deployments[name]
        if name in self._default_deployments:
            return self._default_deployments[name]
        known = sorted({*self.defaults, *(entry.specs if entry is not None else ())})
        raise NotFound(
            f"model alias {name!r} is not defined for tenant {tenant_id or '-'!r}; known aliases: "
            f"{', '.join(known) or 'none'}. Apply a Model document named {name!r} or name the "
            "model as 'provider/model'.",
            kind="model_alias",
            name=name,
            known=known,
        )


def _weighted_order(items: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
    """A weighted random order: each pick draws from the rest in proportion to weight."""
    pool = list(items)
    out: list[Deployment] = []
    while pool:
        point = rng.random() * sum(d.weight for d in pool)
        for index, item in enumerate(pool):
            point -= item.weight
            if point < 0 or index == len(pool) - 1:
                out.append(pool.pop(index))
                break
    return out


def route(
    deployments: Sequence[Deployment],
    *,
    region: str | None,
    residency: Sequence[str] | None,
    healthy: Callable[[Deployment], bool],
    rng: random.Random,
) -> tuple[list[Deployment], list[Attempt]]:
    """The order in which one call tries an alias's deployments.

    Deployments outside ``residency`` are dropped (returned as ``outside_residency``
    attempts); one without a region label is outside any residency, except a ``local`` one
    (the embedded model), which is in ``region``. The rest are ranked by region preference:
    ``region`` first, then deployments with no region label, then other regions (failover).
    Within a rank, healthy deployments come in weighted random order, then the unhealthy ones
    (open breakers) in document order, so that they are reached, and skipped, only when
    everything before them failed.

    Args:
        deployments: The alias's deployments.
        region: This process's region (``CORRAL_REGION``), or ``None`` (no preference).
        residency: Regions the caller may use, or ``None`` for any.
        healthy: Whether a deployment's breaker lets calls through.
        rng: Source of the weighted choice.

    Returns:
        ``(deployments in the order to try, deployments dropped by residency)``.
    """
    dropped: list[Attempt] = []
    kept: list[Deployment] = []
    for deployment in deployments:
        # The embedded model runs in this process: it is in this process's region.
        where = deployment.region or (region if deployment.provider == "local" else None)
        if residency is not None and where not in residency:
            where = deployment.region or "no region"
            dropped.append(
                Attempt(
                    deployment.served(),
                    "outside_residency",
                    f"deployment {deployment.name!r} ({where}) is outside the agent's "
                    f"data_residency {list(residency)}",
                )
            )
        else:
            kept.append(deployment)

    def rank(deployment: Deployment) -> int:
        if region is None or deployment.region == region:
            return 0
        return 1 if deployment.region is None else 2

    ordered: list[Deployment] = []
    for level in (0, 1, 2):
        group = [d for d in kept if rank(d) == level]
        ordered += _weighted_order([d for d in group if healthy(d)], rng)
        ordered += [d for d in group if not healthy(d)]
    return ordered, dropped
