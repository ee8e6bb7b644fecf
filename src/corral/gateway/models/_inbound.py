"""Model calls from bring-your-own agents: the service behind ``/v1/chat/completions``.

An agent built with any framework (the OpenAI Agents SDK, LangGraph, plain code) points its
OpenAI client at Corral and authenticates with its agent key (or a service key). Each call
(:meth:`InboundChat.complete`) is one governed ``model.call``:

resolve the model name (:meth:`InboundChat.resolve`: an alias through the model gateway's
catalog, or ``provider/model``; deployments outside an agent's ``data_residency`` dropped, the
rest in the gateway's routing order; a name the principal may not use is refused) -> budget
reservation of the dearest deployment's pessimistic cost (:class:`ModelCallCosts`; the costs
domain's ``InboundCosts``: the agent's and the tenant's daily budgets) -> the tenant's model
quotas -> per deployment, in order: its breaker, the ``model.call`` decision
(:meth:`corral.policy.Governance.authorize`, with ``region`` and ``deployment`` in the context
and ``estimated_cost_usd`` = the reservation), the raw OpenAI-wire call
(:class:`~corral.gateway.models._passthrough.WireChat`: the body as sent, tools included;
Corral never executes the agent's tools); a retryable failure (5xx, 429, timeout, connection)
moves on to the next deployment, for a stream only while it is being opened -> usage
(streaming: the upstream's last chunk, asked for with ``stream_options.include_usage``) -> the
cost (the deployment's price override first) -> the decision rows, the ``model.failover``
events of the deployments passed over, the ``model.call`` audit event, the ``chat {model}``
span and the ``model_calls`` ledger row (settling the reservation), in one transaction.

A refused call (policy, quota, budget) reaches no upstream and still leaves its decision and
audit event. An upstream failure leaves a ``failed`` audit event and an error span.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, cast

import pydantic_core
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from corral.audit import AuditRecord, append_events
from corral.contracts import AgentSpec
from corral.errors import (
    CorralError,
    Forbidden,
    InvalidRequest,
    ModelAPIError,
    ModelPriceUnknown,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
)
from corral.gateway.models._base import Attempt, Served, Usage
from corral.gateway.models._gateway import FAILOVERS, ModelGateway
from corral.gateway.models._local import LOCAL_MODEL_ALIAS
from corral.gateway.models._passthrough import WireChat, WireStream, usage_of
from corral.gateway.models._pricing import (
    BYTES_PER_TOKEN,
    DEFAULT_MAX_OUTPUT_TOKENS,
    Pricer,
    cost_upper_bound,
)
from corral.gateway.models._resilience import counts_as_failure
from corral.gateway.models._routing import Deployment, route
from corral.observability import (
    SpanRow,
    Tracing,
    count_model_cost,
    new_trace_id,
    observe_model_call,
)
from corral.policy import (
    Authorization,
    DecisionRow,
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    agent_entity,
    insert_decisions,
    principal_ref,
)
from corral.registry import AgentRow, AgentVersionRow, StageBindingRow, load_stage_agent
from corral.store import Store, insert_rows
from corral.tenancy import Principal, Quotas

__all__ = [
    "ChatCompletionsRequest",
    "InboundChat",
    "InboundReply",
    "ModelCallCosts",
    "NoCosts",
    "RecordWriter",
    "Reservation",
]

_SPANS = cast(Table, SpanRow.__table__)
_AGENTS = cast(Table, AgentRow.__table__)
_AGENT_VERSIONS = cast(Table, AgentVersionRow.__table__)
_BINDINGS = cast(Table, StageBindingRow.__table__)
_STAGE_DOCUMENTS = (
    select(_AGENT_VERSIONS.c.document)
    .join(_BINDINGS, _BINDINGS.c.version_id == _AGENT_VERSIONS.c.id)
    .join(_AGENTS, _AGENTS.c.id == _BINDINGS.c.agent_id)
    .where(_AGENTS.c.tenant_id == bindparam("b_tenant"), _BINDINGS.c.stage == bindparam("b_stage"))
)

log = logging.getLogger(__name__)


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ChatCompletionsRequest(BaseModel):
    """The fields of an OpenAI chat completions request Corral reads; every other is kept.

    The body reaches the upstream as sent (only ``model`` becomes the upstream's model name,
    and a stream asks for usage), so fields Corral does not know pass through.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    """An alias or ``provider/model`` name the principal may use (``GET /v1/models``)."""
    messages: list[dict[str, Any]] = Field(min_length=1)
    """OpenAI chat messages (``system``, ``user``, ``assistant`` with ``tool_calls``, ``tool``)."""
    tools: list[dict[str, Any]] | None = None
    """The caller's own tools: passed to the upstream; Corral never executes them."""
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    """Cap on generated tokens (older name of ``max_completion_tokens``)."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """Cap on generated tokens, reasoning included."""
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    """``{"include_usage": true}``: the client gets the usage-only last chunk."""
    seed: int | None = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            if message.get("role") not in _ROLES:
                raise ValueError(
                    f"messages[{index}].role must be one of {', '.join(sorted(_ROLES))}"
                )
        return messages

    @property
    def max_output_tokens(self) -> int | None:
        """The output cap the caller set, whichever field it used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_usage(self) -> bool:
        """The client asked for the usage chunk of a stream."""
        return bool((self.stream_options or {}).get("include_usage"))


@dataclass(frozen=True)
class Reservation:
    """What :meth:`ModelCallCosts.reserve` set aside for one call.

    Attributes:
        estimated_cost_usd: The pessimistic estimate reserved, in US dollars (the
            ``estimated_cost_usd`` of the ``model.call`` decisions), or ``None`` when the
            model has no price.
        handle: The costs domain's own reference to the reservation.
    """

    estimated_cost_usd: Decimal | None = Decimal(0)
    handle: Any = None


RecordWriter = Callable[[Connection], None]
"""Writes run in the call's record transaction (with its decisions, audit events and span)."""


class ModelCallCosts(Protocol):
    """Budgets and cost records of inbound model calls ("reserve before, record after").

    The costs domain implements it (``corral.costs.InboundCosts``: daily budgets with
    reservations, one ``model_calls`` row per call); :class:`NoCosts` reserves and records
    nothing. :class:`InboundChat` prices the call (it knows the deployments and the body).
    """

    async def reserve(
        self,
        principal: Principal,
        *,
        amount_usd: Decimal | None,
        agent_day_usd: Decimal | None,
    ) -> Reservation:
        """Reserve a pessimistic estimate of the call before it is made.

        Args:
            principal: Who makes the call.
            amount_usd: The estimate (the dearest deployment that may serve it), or
                ``None`` when a deployment has no price.
            agent_day_usd: The agent's ``limits.max_cost_usd_per_day`` (agent keys).

        Raises:
            corral.errors.BudgetExceeded: a budget would be exceeded (HTTP 429 with the
                figures); the call is not made.
            corral.errors.ModelPriceUnknown: a budget applies and the model has no price.
        """
        ...

    async def release(self, reservation: Reservation) -> None:
        """The call was not made (refused by policy or quota, or the upstream failed)."""
        ...

    async def settle(
        self,
        reservation: Reservation,
        *,
        principal: Principal,
        served: Served,
        usage: Usage | None,
        cost_usd: Decimal | None,
        trace_id: str,
    ) -> RecordWriter | None:
        """The call's ledger row and the reservation's release, to write with its record.

        Args:
            reservation: What :meth:`reserve` returned.
            principal: Who made the call.
            served: The deployment that answered.
            usage: The upstream's usage; ``None`` when it sent none or a malformed stream
                (the row is flagged; ``cost_usd`` is then the reservation).
            cost_usd: The call's cost in US dollars, or ``None`` when not priced.
            trace_id: The call's trace (its ``chat`` span and audit event).

        Returns:
            What to write in the call's record transaction, or ``None``.
        """
        ...


class NoCosts:
    """:class:`ModelCallCosts` that reserves nothing and records nothing."""

    async def reserve(
        self,
        principal: Principal,
        *,
        amount_usd: Decimal | None,
        agent_day_usd: Decimal | None,
    ) -> Reservation:
        """Reserve nothing (the estimate is still the decisions' ``estimated_cost_usd``)."""
        return Reservation(amount_usd)

    async def release(self, reservation: Reservation) -> None:
        """Nothing to release."""

    async def settle(
        self,
        reservation: Reservation,
        *,
        principal: Principal,
        served: Served,
        usage: Usage | None,
        cost_usd: Decimal | None,
        trace_id: str,
    ) -> RecordWriter | None:
        """Record nothing."""
        return None


@dataclass(frozen=True)
class InboundReply:
    r"""The answer to one inbound call: a JSON body or an SSE stream.

    Attributes:
        trace_id: The call's trace (``X-Corral-Trace-Id``).
        content: The upstream's JSON body as it came (non-streaming).
        stream: The SSE events to send (``data: ...\n\n``, ending with ``data: [DONE]``);
            the call is recorded when it ends.
    """

    trace_id: str
    content: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass(frozen=True)
class _Target:
    """One deployment a call may go to, and its raw-wire client."""

    deployment: Deployment
    served: Served
    wire: WireChat


@dataclass
class _Call:
    """One call in flight: what its record needs."""

    principal: Principal
    trace_id: str
    span: Span
    served: Served | None = None
    stream: bool = False
    decisions: list[DecisionRow] = field(default_factory=list)
    decision_id: str | None = None
    reservation: Reservation | None = None
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


class InboundChat:
    """Governed raw OpenAI-wire model calls for principals outside managed runs.

    Args:
        store: Where decisions, audit events and spans are written.
        models: The model gateway: its catalog resolves aliases, its providers, breakers,
            region and rng serve and order the deployments.
        governance: Decides ``model.call``.
        tracing: Where ``chat`` spans go (stored with each call's audit event).
        quotas: The tenant's model quotas (``model_tokens_per_day``, ``cost_usd_per_day``);
            ``None`` checks none.
        stage: ``context.stage`` of decisions; for an agent key, the stage whose bound agent
            version's contract names the models it may use.
        costs: Budgets and cost rows; :class:`NoCosts` by default.
        cache_seconds: How long an agent's contract at ``stage`` is reused before it is read
            again (a promotion counts after at most this long).
        defer_records: Answer before the call's rows are committed (they are written in the
            next batch, right after). Saves the commit's latency; a crash in between loses
            the record of a call that was answered. Off: the answer waits for the commit.

    Rows are written with group commit (:class:`_RecordBatches`): the calls that finish while
    a write runs share the next transaction.
    """

    def __init__(
        self,
        store: Store,
        models: ModelGateway,
        governance: Governance,
        tracing: Tracing,
        *,
        quotas: Quotas | None = None,
        stage: str = "production",
        costs: ModelCallCosts | None = None,
        cache_seconds: float = 2.0,
        defer_records: bool = False,
    ) -> None:
        self.store = store
        self.models = models
        self.governance = governance
        self.tracing = tracing
        self.quotas = quotas
        self.stage = stage
        self.costs: ModelCallCosts = costs or NoCosts()
        self.cache_seconds = cache_seconds
        self._wires: dict[str, tuple[object, WireChat]] = {}
        self._specs: dict[tuple[str, str], tuple[float, AgentSpec | None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._records = _RecordBatches(store)
        self.defer_records = defer_records
        self._pricer_cache: Pricer | None = None

    async def aclose(self) -> None:
        """Wait for streams being recorded, then close the upstream connection pools."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._records.aclose()
        wires, self._wires = self._wires, {}
        for _, wire in wires.values():
            await wire.aclose()

    # --- the models a principal may use -------------------------------------------------------

    async def models_for(self, principal: Principal) -> list[str]:
        """The model names ``principal`` may use, sorted (``GET /v1/models``).

        An agent key: its contract's ``model.default``, ``allowed`` and ``fallback`` (at the
        endpoint's stage) that are an alias of the tenant (``Model`` documents, or the
        platform's default set) or a ``provider/model`` of a configured OpenAI-compatible
        provider. Another principal: every alias of the tenant, plus every model named by the
        tenant's agent contracts at that stage and the embedded model (any ``provider/model``
        name of a configured provider may be asked for as well).
        """
        configured = {
            name
            for name, provider in self.models.providers.items()
            if hasattr(provider, "wire_endpoint")  # can take a raw OpenAI-wire call
        }
        aliases = await self._aliases(principal.tenant_id)
        agent = _agent_of(principal)
        if agent is not None:
            spec = await self._spec(principal.tenant_id, agent)
            names = set() if spec is None else _contract_models(spec)
        else:
            names = await self._tenant_models(principal.tenant_id)
            names.add(f"local/{LOCAL_MODEL_ALIAS}")
            names |= aliases
        return sorted(
            name
            for name in names
            if (name in aliases if "/" not in name else name.partition("/")[0] in configured)
        )

    async def _aliases(self, tenant_id: str) -> set[str]:
        """The tenant's aliases (its ``Model`` documents and the platform's default set)."""
        aliases = getattr(self.models.catalog, "aliases", None)
        if aliases is None:  # a resolver without a listing
            return set()
        return set(await aliases(tenant_id))

    async def _tenant_models(self, tenant_id: str) -> set[str]:
        def read(connection: Connection) -> list[Any]:
            values = {"b_tenant": tenant_id, "b_stage": self.stage}
            return list(connection.execute(_STAGE_DOCUMENTS, values).scalars())

        names: set[str] = set()
        for document in await self.store.read_sync(read, tenant_id):
            try:
                names |= _contract_models(AgentSpec.model_validate(document["spec"]))
            except (ValidationError, KeyError, TypeError):
                continue
        return names

    async def _spec(self, tenant_id: str, agent: str) -> AgentSpec | None:
        """The agent's contract at the endpoint's stage (cached ``cache_seconds``)."""
        key = (tenant_id, agent)
        now = time.monotonic()
        cached = self._specs.get(key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]

        def read(connection: Connection) -> dict[str, Any] | None:
            return load_stage_agent(connection, tenant_id=tenant_id, agent=agent, stage=self.stage)

        document = await self.store.read_sync(read, tenant_id)
        spec = None if document is None else AgentSpec.model_validate(document["spec"])
        if len(self._specs) >= 4096:
            self._specs.clear()
        self._specs[key] = (now, spec)
        return spec

    # --- resolution ---------------------------------------------------------------------------

    async def resolve(
        self,
        tenant_id: str,
        name: str,
        known: Callable[[], list[str]],
        *,
        residency: Sequence[str] | None = None,
        list_aliases: bool = True,
    ) -> tuple[list[_Target], list[Attempt]]:
        """The deployments that may serve model ``name``, in the order to try, with clients.

        ``provider/model`` is its own deployment; an alias resolves through the model
        gateway's catalog (the tenant's ``Model`` documents, then the platform's default set).
        Deployments outside ``residency`` are dropped; the rest are ordered as the gateway
        orders them (region preference, weighted among healthy ones, open breakers last).
        Deployments that cannot take a raw OpenAI-wire call (Anthropic) are skipped when
        another one can serve.

        Args:
            tenant_id: The caller's tenant.
            name: The requested model.
            known: The ``provider/model`` names to list when ``name`` is unknown.
            residency: Regions the deployments must be in (an agent's ``data_residency``).
            list_aliases: Name the tenant's aliases when ``name`` is unknown (not for an
                agent key: ``known`` lists its contract's models).

        Returns:
            ``(targets in the order to try, deployments dropped by residency)``.

        Raises:
            NotFound: an unknown alias, or a provider that is not configured (the message
                lists the aliases and models the caller may use).
            InvalidRequest: no deployment is OpenAI-compatible (code
                ``model_not_passthrough``).
            Forbidden: every deployment is outside ``residency`` (code
                ``model_outside_residency``).
            ModelAPIError: the deployment's provider could not start, or its key cannot be
                resolved.
        """
        provider_name, sep, model = name.partition("/")
        if sep:
            if not model or provider_name not in self.models.providers:
                raise await self._unknown(tenant_id, name, known, list_aliases)
            deployments = [Deployment(alias=name, name=name, provider=provider_name, model=model)]
        else:
            try:
                deployments = await self.models.catalog.resolve(tenant_id, name)
            except NotFound:
                raise await self._unknown(tenant_id, name, known, list_aliases) from None
        breakers = self.models.breakers
        ordered, dropped = route(
            deployments,
            region=self.models.region,
            residency=residency,
            healthy=lambda d: breakers.state(d.breaker_key) != "open",
            rng=self.models.rng,
        )
        if not ordered:
            raise Forbidden(
                f"Model {name!r} has no deployment in the agent's data_residency "
                f"{list(residency or [])}: {'; '.join(a.error for a in dropped)}. Add a "
                "deployment in an allowed region to the Model document, or use another model.",
                code="model_outside_residency",
            )
        targets: list[_Target] = []
        refusal: CorralError | None = None
        for deployment in ordered:
            try:
                wire = await self._wire(deployment, tenant_id)
            except (InvalidRequest, ModelAPIError) as exc:
                refusal = refusal or exc
                continue
            targets.append(_Target(deployment, deployment.served(), wire))
        if not targets:
            assert refusal is not None
            raise refusal
        return targets, dropped

    async def _unknown(
        self, tenant_id: str, name: str, known: Callable[[], list[str]], list_aliases: bool
    ) -> NotFound:
        aliases = sorted(await self._aliases(tenant_id)) if list_aliases else []
        listed = sorted({*aliases, *known()})
        return NotFound(
            f"Model {name!r} is not known to Corral. Models you may use: "
            f"{', '.join(listed) or 'none'} (GET /v1/models lists them; names are an alias "
            f"({', '.join(aliases) or 'none'}) or 'provider/model' with a configured provider: "
            f"{', '.join(sorted(self.models.providers)) or 'none'}).",
            kind="model",
            name=name,
            known=listed,
        )

    async def _wire(self, deployment: Deployment, tenant_id: str) -> WireChat:
        """The raw-wire client of a deployment (its own endpoint and key, or its provider's).

        Raises:
            InvalidRequest: the deployment is not OpenAI-compatible (``model_not_passthrough``).
            ModelAPIError: its provider could not start or is not configured, or its key
                cannot be resolved.
        """
        provider_name = deployment.provider
        if deployment.base_url is None and deployment.api_key is None:
            provider = self.models.providers.get(provider_name)
            cached = self._wires.get(provider_name)
            if cached is not None and cached[0] is provider:
                return cached[1]
            endpoint = getattr(provider, "wire_endpoint", None)
            if endpoint is None:
                reason = getattr(provider, "reason", None)
                if isinstance(reason, str):  # a provider that could not start says why
                    raise ModelAPIError(reason, provider=provider_name)
                if provider is None and provider_name != "anthropic":
                    raise ModelAPIError(
                        f"Deployment {deployment.name!r}: model provider {provider_name!r} is "
                        f"not configured; configured: "
                        f"{', '.join(sorted(self.models.providers)) or 'none'}.",
                        provider=provider_name,
                    )
                raise self._not_passthrough(deployment)
            base_url, api_key, timeout = endpoint()
            wire = WireChat(provider_name, base_url, api_key, timeout_seconds=timeout)
            self._wires[provider_name] = (provider, wire)
            return wire
        if provider_name == "anthropic" or deployment.base_url is None:
            # Anthropic speaks its own wire; a key without an endpoint is its provider's API.
            raise self._not_passthrough(deployment)
        key: str | None = None
        if deployment.api_key is not None:
            secrets = self.models.secrets
            if secrets is None:
                raise ModelAPIError(
                    f"Deployment {deployment.name!r} references {deployment.api_key} but the "
                    "model gateway has no credential broker; configure one.",
                    provider=provider_name,
                )
            try:
                key = await secrets(tenant_id, deployment.api_key)
            except CorralError as exc:
                raise ModelAPIError(
                    f"Deployment {deployment.name!r}: its api_key {deployment.api_key} cannot "
                    f"be resolved: {exc.message}",
                    provider=provider_name,
                ) from exc
        timeout = deployment.timeout_seconds or 120.0
        digest = hashlib.sha256((key or "").encode()).hexdigest()
        cache_key = f"{provider_name}|{deployment.base_url}|{digest}|{timeout}"
        cached = self._wires.get(cache_key)
        if cached is None:
            wire = WireChat(provider_name, deployment.base_url, key, timeout_seconds=timeout)
            cached = self._wires[cache_key] = (None, wire)
        return cached[1]

    def _not_passthrough(self, deployment: Deployment) -> InvalidRequest:
        return InvalidRequest(
            f"Model {deployment.alias!r} is served by provider {deployment.provider!r} "
            f"(deployment {deployment.name!r}), which does not speak the OpenAI chat "
            "completions wire format, so /v1/chat/completions cannot pass calls to it; use a "
            "model of an OpenAI-compatible provider (GET /v1/models), or run the agent on Corral.",
            code="model_not_passthrough",
        )

    # --- pricing ------------------------------------------------------------------------------

    @property
    def _pricer(self) -> Pricer:
        prices = self.quotas.settings.model_prices if self.quotas is not None else {}
        if self._pricer_cache is None or self._pricer_cache.settings_prices is not prices:
            self._pricer_cache = Pricer(prices)
        return self._pricer_cache

    def _estimate(
        self, targets: list[_Target], request: ChatCompletionsRequest, size: int
    ) -> Decimal | None:
        """The call's pessimistic cost at its dearest deployment; ``None``: one is unpriced.

        Every byte of the body counts as a third of a prompt token (an upper bound for BPE
        tokenizers, as ``corral.costs.estimate_input_tokens``), plus every output token the
        call may generate at the output rate.
        """
        input_tokens = math.ceil(size / BYTES_PER_TOKEN)
        output_tokens = request.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        dearest = Decimal(0)
        for target in targets:
            served = target.served
            try:
                price = self._pricer.rates(served.provider, served.model, served.price)
            except ModelPriceUnknown:
                return None
            dearest = max(dearest, cost_upper_bound(price, input_tokens, output_tokens))
        return dearest

    def _cost(self, call: _Call, usage: Usage | None) -> Decimal | None:
        """The call's cost: priced from ``usage``, else billed at the reservation."""
        served = call.served
        assert served is not None and call.reservation is not None
        if usage is None:
            return call.reservation.estimated_cost_usd
        return self._pricer.cost(served.provider, served.model, usage, served.price)

    # --- one call -----------------------------------------------------------------------------

    async def complete(self, principal: Principal, body: bytes) -> InboundReply:
        """Take one chat completions request through the governed path (see the module).

        Args:
            principal: The authenticated caller (an agent key, a service key, a user).
            body: The request body: OpenAI chat completions JSON.

        Returns:
            The upstream's JSON body, or its SSE stream (recorded when it ends).

        Raises:
            InvalidRequest: the body is not JSON or not a chat completions request, or no
                deployment of the model is OpenAI-compatible.
            NotFound: an unknown alias or provider (names the known models).
            Forbidden: an agent key's contract does not name the model, or the agent has no
                version at the endpoint's stage, or that version is retired, or no deployment
                is in its data residency.
            PolicyDenied: policy refuses ``model.call`` on every deployment (``model_denied``).
            QuotaExceeded: a tenant model quota is used up.
            corral.errors.BudgetExceeded: a budget would be exceeded (from ``costs``).
            ModelAPIError: the upstream failed (status, transport, timeout) and no other
                deployment answered.
            CorralError: code ``call_not_recorded``: the store refused the call's record.
        """
        request, data = _parse(body)
        agent = _agent_of(principal)
        spec = None
        if agent is not None:
            spec = await self._spec(principal.tenant_id, agent)
            if spec is None:
                raise Forbidden(
                    f"Agent {agent!r} has no version bound to stage {self.stage!r}, so it may "
                    f"call no models here; promote one with `corral promote {agent} --to "
                    f"{self.stage}`.",
                    code="agent_not_at_stage",
                )
            if spec.status == "retired":
                raise Forbidden(
                    f"Agent {agent!r} is retired at stage {self.stage!r} and may call no models.",
                    code="agent_retired",
                )
        allowed = None if spec is None else _contract_models(spec)
        targets, dropped = await self.resolve(
            principal.tenant_id,
            request.model,
            lambda: sorted(allowed or []),
            residency=None if spec is None else spec.data_residency,
            list_aliases=allowed is None,
        )
        if allowed is not None and request.model not in allowed:
            raise Forbidden(
                f"Agent {agent!r} may not use model {request.model!r}: its contract names "
                f"{', '.join(sorted(allowed))} (spec.model.default, allowed, fallback).",
                code="model_not_allowed",
            )
        served = targets[0].served
        trace_id = new_trace_id()
        with Tracing.trace(trace_id):
            span = self.tracing.tracer.start_span(
                f"chat {served.model}", context=otel_context.Context()
            )
        call = _Call(principal, trace_id, span, served, stream=request.stream)
        _request_attributes(span, principal, served, request)
        try:
            call.reservation = await self.costs.reserve(
                principal,
                amount_usd=self._estimate(targets, request, len(body)),
                agent_day_usd=None if spec is None else spec.limits.max_cost_usd_per_day,
            )
            if self.quotas is not None:
                await self.quotas.check_model_call(principal.tenant_id)
            for attempt in dropped:
                self._passed(call, attempt)
            answer = await self._call(call, spec, targets, data, request)
        except CorralError as exc:
            await self._refused(call, exc)
            raise
        except BaseException:
            await self._refused(call, None)
            raise
        if isinstance(answer, WireStream):
            return InboundReply(trace_id, stream=self._relay(call, answer))
        parsed, content = answer
        model = parsed.get("model")
        usage = usage_of(parsed.get("usage"))
        await self._finish(call, usage, model if isinstance(model, str) else None)
        return InboundReply(trace_id, content=content)

    def _passed(self, call: _Call, attempt: Attempt) -> None:
        """A deployment passed over (audited as ``model.failover`` with the call)."""
        call.attempts.append(attempt)
        FAILOVERS.labels(attempt.outcome).inc()

    async def _call(
        self,
        call: _Call,
        spec: AgentSpec | None,
        targets: list[_Target],
        data: dict[str, Any],
        request: ChatCompletionsRequest,
    ) -> WireStream | tuple[dict[str, Any], bytes]:
        """Try the deployments in order: breaker, ``model.call`` decision, the call.

        A retryable failure (5xx, 429, timeout, connection) moves on to the next deployment; a
        stream fails over only while it is being opened (before any chunk was sent).
        """
        breakers = self.models.breakers
        refusals: list[str] = []
        failures: list[ModelAPIError] = []
        for target in targets:
            served, key = target.served, target.deployment.breaker_key
            if breakers.state(key) == "open":
                self._passed(call, Attempt(served, "circuit_open", self._open_text(target)))
                continue
            refusal = await self._decide(call, spec, target)
            if refusal is not None:
                refusals.append(refusal)
                self._passed(call, Attempt(served, "denied", refusal))
                continue
            if not (await breakers.acquire(key)).allowed:  # another call took the half-open trial
                self._passed(call, Attempt(served, "circuit_open", self._open_text(target)))
                continue
            call.served = served
            upstream = {**data, "model": served.model}
            try:
                if request.stream:
                    answer: WireStream | tuple[dict[str, Any], bytes] = await target.wire.stream(
                        upstream, forward_usage=request.wants_usage
                    )
                else:
                    answer = await target.wire.create(upstream)
            except ModelAPIError as exc:
                if counts_as_failure(exc):
                    await breakers.record_failure(key)
                else:
                    await breakers.record_success(key)  # it answered; the request was refused
                if not exc.retryable:
                    raise
                failures.append(exc)
                self._passed(call, Attempt(served, "failed", exc.message))
                continue
            except BaseException:
                await breakers.release(key)
                raise
            await breakers.record_success(key)
            _served_attributes(call.span, served)
            return answer
        if failures:
            last = failures[-1]
            message = last.message
            if len(failures) > 1:
                message = "every model deployment failed: " + "; ".join(
                    f"{a.served.deployment}: {a.error}"
                    for a in call.attempts
                    if a.outcome == "failed"
                )
            raise ModelAPIError(message, provider=last.provider, status_code=last.status_code)
        if refusals and all(a.outcome in ("denied", "outside_residency") for a in call.attempts):
            raise PolicyDenied(refusals[0], code="model_denied")
        skipped = "; ".join(a.error for a in call.attempts if a.outcome != "denied")
        raise ModelAPIError(
            f"no model deployment could be tried: {skipped}",
            provider=targets[0].served.provider,
        )

    def _open_text(self, target: _Target) -> str:
        deployment = target.deployment
        return (
            f"deployment {deployment.name!r} ({deployment.model_name}) is skipped: its circuit "
            f"breaker opened after {self.models.breakers.failure_threshold} consecutive failures"
        )

    async def _decide(self, call: _Call, spec: AgentSpec | None, target: _Target) -> str | None:
        """Decide ``model.call`` for one deployment; the refusal text, or ``None``."""
        principal, served, deployment = call.principal, target.served, target.deployment
        assert call.reservation is not None
        agent = _agent_of(principal)
        if agent is not None and spec is not None:
            ref = EntityRef("Agent", agent)
            entity = agent_entity(agent, principal.tenant_id, spec)
        else:
            ref, entity = _principal_entity(principal)
        model = deployment.model_name
        model_ref = EntityRef("Model", model)
        policy_request = PolicyRequest(
            principal=ref,
            action="model.call",
            resource=model_ref,
            context=PolicyContext(
                tenant=principal.tenant_id,
                stage=self.stage,
                requester=principal.id,
                region=deployment.region,
                deployment=None if deployment.name == model else deployment.name,
                estimated_cost_usd=call.reservation.estimated_cost_usd or Decimal(0),
            ),
        )
        model_entity = Entity(model_ref, {"provider": served.provider, "name": served.model})
        authorization: Authorization = await self.governance.authorize(
            principal.tenant_id, policy_request, [entity, model_entity]
        )
        call.decisions.append(authorization.row)
        call.decision_id = authorization.decision.id
        if authorization.kind == "allow":
            return None
        message = authorization.denial(f"calling model {model!r} for {principal.id}")
        if authorization.kind == "require_approval":
            message += (
                "; inbound model calls cannot wait for an approval: ask an admin to change "
                "the policy, or run the agent on Corral"
            )
        return message

    async def _relay(self, call: _Call, stream: WireStream) -> AsyncIterator[bytes]:
        """Pass the stream's events on; record the call when it ends, however it ends."""
        try:
            async for event in stream.events():
                yield event
        finally:
            if stream.error is not None:
                call.span.set_attribute("corral.stream.error", stream.error[:500])
            usage = None if stream.malformed else stream.usage
            task = asyncio.ensure_future(self._finish(call, usage, stream.model))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            # A client that went away cancels this generator: the record is still written.
            await asyncio.shield(task)

    async def _finish(self, call: _Call, usage: Usage | None, response_model: str | None) -> None:
        """Settle, end the span, and write the decision, audit event and span."""
        served, span = call.served, call.span
        assert served is not None and call.reservation is not None
        cost = self._cost(call, usage)
        ledger = await self.costs.settle(
            call.reservation,
            principal=call.principal,
            served=served,
            usage=usage,
            cost_usd=cost,
            trace_id=call.trace_id,
        )
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        shown = usage or Usage()
        seconds = time.perf_counter() - call.started
        observe_model_call(served.provider, served.model, seconds, usage=shown)
        count_model_cost(served.provider, served.model, cost)
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": shown.input_tokens,
            "gen_ai.usage.output_tokens": shown.output_tokens,
            "corral.usage.cache_read_tokens": shown.cache_read_tokens,
            "corral.usage.reasoning_tokens": shown.reasoning_tokens,
            "corral.usage.missing": usage is None,
        }
        if cost is not None:
            attributes["corral.cost_usd"] = str(cost)
        span.set_attributes(attributes)  # one lock and validation pass, not one per attribute
        details: dict[str, Any] = {
            "usage": {
                "input_tokens": shown.input_tokens,
                "output_tokens": shown.output_tokens,
                "cache_read_tokens": shown.cache_read_tokens,
                "cache_write_tokens": shown.cache_write_tokens,
                "reasoning_tokens": shown.reasoning_tokens,
            },
            "usage_missing": usage is None,
        }
        if cost is not None:
            details["cost_usd"] = str(cost)
        await self._record(call, "completed", details, ledger)

    async def _refused(self, call: _Call, error: CorralError | None) -> None:
        """Record a call that was refused or failed before it answered."""
        if call.reservation is not None:
            await self.costs.release(call.reservation)
        outcome: Literal["denied", "quota_exceeded", "budget_exceeded", "failed"] = "failed"
        if isinstance(error, PolicyDenied):
            outcome = "denied"
        elif isinstance(error, QuotaExceeded):
            outcome = "quota_exceeded"
        elif error is not None and error.code == "budget_exceeded":
            outcome = "budget_exceeded"
        message = error.message if error is not None else "the call was interrupted"
        call.span.set_attribute("error.type", error.code if error is not None else "interrupted")
        call.span.set_status(Status(StatusCode.ERROR, message[:500]))
        details: dict[str, Any] = {"error": message[:1000]}
        if isinstance(error, ModelAPIError) and call.served is not None:  # the upstream failed
            seconds = time.perf_counter() - call.started
            observe_model_call(call.served.provider, call.served.model, seconds)
        if isinstance(error, ModelAPIError) and error.status_code is not None:
            details["upstream_status"] = error.status_code
        await self._record(call, outcome, details)

    async def _record(
        self,
        call: _Call,
        outcome: str,
        details: dict[str, Any],
        ledger: RecordWriter | None = None,
    ) -> None:
        """End the span; write decisions, audit events, span and ledger in one transaction."""
        served, principal = call.served, call.principal
        assert served is not None
        call.span.set_attribute("corral.outcome", outcome)
        call.span.end()
        tenant_id = principal.tenant_id
        spans = self.tracing.exporter.drain(call.trace_id, tenant_id=tenant_id, run_id=None)
        audit = AuditRecord(
            principal.id,
            "model.call",
            f"model:{served.alias}",
            outcome,
            trace_id=call.trace_id,
            policy_decision_id=call.decision_id,
            details={
                "channel": "inbound",
                "principal_kind": principal.kind,
                "provider": served.provider,
                "model": served.model,
                "deployment": served.deployment,
                "region": served.region,
                "stream": call.stream,
                "duration_ms": round((time.perf_counter() - call.started) * 1000, 3),
                **details,
            },
        )
        audits = [*self._failover_events(call), audit]
        await self._records.write(
            tenant_id,
            call.trace_id,
            _Rows(call.decisions, audits, spans, ledger),
            wait=not self.defer_records,
        )

    def _failover_events(self, call: _Call) -> list[AuditRecord]:
        """One ``model.failover`` event per deployment passed over before the answer."""
        served = call.served
        return [
            AuditRecord(
                call.principal.id,
                "model.failover",
                f"model:{attempt.served.alias}",
                attempt.outcome,
                trace_id=call.trace_id,
                details={
                    "channel": "inbound",
                    "deployment": attempt.served.deployment,
                    "model": f"{attempt.served.provider}/{attempt.served.model}",
                    "region": attempt.served.region,
                    "error": attempt.error[:500],
                    "served_by": None if served is None else served.deployment,
                },
            )
            for attempt in call.attempts
        ]


@dataclass(frozen=True)
class _Rows:
    """What one call stores: its decisions, audit events, span and ledger row."""

    decisions: list[DecisionRow]
    audits: list[AuditRecord]
    spans: list[dict[str, Any]]
    ledger: RecordWriter | None = None


class _RecordBatches:
    """Writes calls' rows with group commit: calls recorded while a write runs share the next.

    Every call's rows go in one transaction (with those of the other calls of its batch), so a
    call is recorded whole or not at all; with many concurrent calls one commit serves many.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[str, list[tuple[str, _Rows, asyncio.Future[None]]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._waited = False
        """A call of the pending batches waits for its commit (it may then run inline)."""

    async def write(self, tenant_id: str, trace_id: str, rows: _Rows, *, wait: bool) -> None:
        """Store ``rows`` in the next batch; with ``wait``, return once it is committed.

        Raises:
            CorralError: ``call_not_recorded`` (with ``wait``): the store refused the batch.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(tenant_id, []).append((trace_id, rows, done))
        self._waited = self._waited or wait
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.ensure_future(self._flush())
        if wait:
            await done
        else:
            done.add_done_callback(_log_lost)

    async def aclose(self) -> None:
        """Wait for the rows submitted so far to be written."""
        while self._flushing is not None and not self._flushing.done():
            await self._flushing

    async def _flush(self) -> None:
        while self._pending:
            batches, self._pending = self._pending, {}
            waited, self._waited = self._waited, False
            for tenant_id, items in batches.items():
                await self._write(tenant_id, items, inline=waited)

    async def _write(
        self,
        tenant_id: str,
        items: list[tuple[str, _Rows, asyncio.Future[None]]],
        *,
        inline: bool,
    ) -> None:
        def write(connection: Connection) -> None:
            insert_decisions(connection, [d for _, rows, _ in items for d in rows.decisions])
            append_events(connection, tenant_id, [a for _, rows, _ in items for a in rows.audits])
            # Compiled once, values processed as SQLAlchemy would (as the runtime's checkpoint).
            insert_rows(connection, _SPANS, [span for _, rows, _ in items for span in rows.spans])
            for _, rows, _ in items:
                if rows.ledger is not None:
                    rows.ledger(connection)

        try:
            # A caller waits for this commit: on SQLite, skip the writer thread's round trip
            # (two thread wake-ups) when it is idle; deferred records leave the loop free.
            await self.store.run_sync(write, tenant_id, inline_when_idle=inline)
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            for trace_id, _, done in items:
                if not done.done():
                    done.set_exception(
                        CorralError(
                            f"model call {trace_id} could not be recorded: the store refused "
                            f"it ({type(exc).__name__}: {detail[0] if detail else 'no detail'})."
                            " Check the database (reachable, disk space, permissions).",
                            code="call_not_recorded",
                        )
                    )
            return
        for _, _, done in items:
            if not done.done():
                done.set_result(None)


def _log_lost(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("an inbound model call was served but not recorded: %s", done.exception())


def _parse(body: bytes) -> tuple[ChatCompletionsRequest, dict[str, Any]]:
    """The body parsed once: its validated fields and the dict forwarded upstream."""
    try:
        data = pydantic_core.from_json(body)
    except ValueError as exc:
        raise InvalidRequest(
            f"The request body is not JSON ({exc}); send an OpenAI chat completions request."
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object (a chat completions request).")
    try:
        request = ChatCompletionsRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidRequest(f"The chat completions request is invalid: {problems}.") from exc
    return request, data


def _contract_models(spec: AgentSpec) -> set[str]:
    model = spec.model
    return {model.default, *model.allowed, *model.fallback}


def _agent_of(principal: Principal) -> str | None:
    if principal.kind != "agent":
        return None
    return principal.agent or principal.id.partition(":")[2]


def _principal_entity(principal: Principal) -> tuple[EntityRef, Entity]:
    """The Cedar entity of a person or service account, with its roles."""
    ref = principal_ref(principal.id)
    attrs: dict[str, object] = {"tenant": principal.tenant_id, "roles": sorted(principal.roles)}
    if ref.type == "User":
        attrs["groups"] = sorted(principal.groups)
    return ref, Entity(ref, attrs)


def _served_attributes(span: Span, served: Served) -> None:
    """The deployment that answered (after a failover, not the first one tried)."""
    span.update_name(f"chat {served.model}")
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": served.provider,
        "gen_ai.request.model": served.model,
        "corral.model.deployment": served.deployment,
    }
    if served.region:
        attributes["corral.model.region"] = served.region
    span.set_attributes(attributes)


def _request_attributes(
    span: Span, principal: Principal, served: Served, request: ChatCompletionsRequest
) -> None:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": served.provider,
        "gen_ai.request.model": served.model,
        "corral.principal": principal.id,
        "corral.model.alias": served.alias,
        "corral.model.channel": "inbound",
        "corral.stream": request.stream,
    }
    if request.max_output_tokens:
        attributes["gen_ai.request.max_tokens"] = request.max_output_tokens
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.seed is not None:
        attributes["gen_ai.request.seed"] = request.seed
    span.set_attributes(attributes)
