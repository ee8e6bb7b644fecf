"""Model calls from bring-your-own agents: the service behind ``/v1/chat/completions``.

An agent built with any framework (the OpenAI Agents SDK, LangGraph, plain code) points its
OpenAI client at Corral and authenticates with its agent key (or a service key). Each call
(:meth:`InboundChat.complete`) is one governed ``model.call``:

resolve the model name (:meth:`InboundChat.resolve`: ``provider/model`` through the model
gateway's providers; a name the principal may not use is refused) -> budget reservation
(:class:`ModelCallCosts`, a no-op until the costs domain is wired in) -> the ``model.call``
decision (:meth:`corral.policy.Governance.authorize`, ``estimated_cost_usd`` = the
reservation) -> the tenant's model quotas -> the raw OpenAI-wire call
(:class:`~corral.gateway.models._passthrough.WireChat`: the body as sent, tools included;
Corral never executes the agent's tools) -> usage (streaming: the upstream's last chunk, asked
for with ``stream_options.include_usage``) -> settle the reservation -> the decision row, the
``model.call`` audit event and the ``chat {model}`` span, in one transaction of their own.

A refused call (policy, quota, budget) reaches no upstream and still leaves its decision and
audit event. An upstream failure leaves a ``failed`` audit event and an error span.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
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
    NotFound,
    PolicyDenied,
    QuotaExceeded,
)
from corral.gateway.models._base import Served, Usage
from corral.gateway.models._gateway import ModelGateway
from corral.gateway.models._local import LOCAL_MODEL_ALIAS
from corral.gateway.models._passthrough import WireChat, WireStream, usage_of
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
from corral.store import Store
from corral.tenancy import Principal, Quotas

__all__ = [
    "ChatCompletionsRequest",
    "InboundChat",
    "InboundReply",
    "ModelCallCosts",
    "NoCosts",
    "Reservation",
]

_SPANS = cast(Table, SpanRow.__table__)
_SPAN_INSERT = _SPANS.insert()
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
            ``estimated_cost_usd`` of the ``model.call`` decision).
        handle: The costs domain's own reference to the reservation.
    """

    estimated_cost_usd: Decimal = Decimal(0)
    handle: Any = None


class ModelCallCosts(Protocol):
    """Budgets and cost records of inbound model calls ("reserve before, record after").

    The costs domain implements it (``corral.costs``: budgets with reservations, one cost
    row per call); :class:`NoCosts` is the default until it is wired in.
    """

    async def reserve(
        self, principal: Principal, served: Served, request: ChatCompletionsRequest
    ) -> Reservation:
        """Reserve a pessimistic estimate of the call before it is made.

        Raises:
            corral.errors.BudgetExceeded: a budget would be exceeded (HTTP 429 with the
                figures); the call is not made.
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
        trace_id: str,
    ) -> Decimal | None:
        """Record the call's cost and settle the reservation with the real usage.

        Args:
            reservation: What :meth:`reserve` returned.
            principal: Who made the call.
            served: The deployment that answered.
            usage: The upstream's usage; ``None`` when it sent none or a malformed stream
                (bill the reservation and flag the row).
            trace_id: The call's trace (its ``chat`` span and audit event).

        Returns:
            The call's cost in US dollars, or ``None`` when not priced.
        """
        ...


class NoCosts:
    """:class:`ModelCallCosts` that reserves nothing and records nothing."""

    async def reserve(
        self, principal: Principal, served: Served, request: ChatCompletionsRequest
    ) -> Reservation:
        """Reserve nothing."""
        return Reservation()

    async def release(self, reservation: Reservation) -> None:
        """Nothing to release."""

    async def settle(
        self,
        reservation: Reservation,
        *,
        principal: Principal,
        served: Served,
        usage: Usage | None,
        trace_id: str,
    ) -> Decimal | None:
        """Record nothing; not priced."""
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
    decision: DecisionRow | None = None
    decision_id: str | None = None
    reservation: Reservation | None = None
    started: float = field(default_factory=time.perf_counter)


class InboundChat:
    """Governed raw OpenAI-wire model calls for principals outside managed runs.

    Args:
        store: Where decisions, audit events and spans are written.
        models: The model gateway; its providers serve ``provider/model`` names.
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
        endpoint's stage) whose provider is configured. Another principal: every model named
        by the tenant's agent contracts at that stage, plus the embedded model. Only models of
        a configured OpenAI-compatible provider are listed (any ``provider/model`` name of one
        may be asked for as well).
        """
        configured = {
            name
            for name, provider in self.models.providers.items()
            if hasattr(provider, "wire_endpoint")  # can take a raw OpenAI-wire call
        }
        agent = _agent_of(principal)
        if agent is not None:
            spec = await self._spec(principal.tenant_id, agent)
            names = set() if spec is None else _contract_models(spec)
        else:
            names = await self._tenant_models(principal.tenant_id)
            names.add(f"local/{LOCAL_MODEL_ALIAS}")
        return sorted(name for name in names if name.partition("/")[0] in configured)

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

    def resolve(self, name: str, known: Callable[[], list[str]]) -> _Target:
        """The deployment serving model ``name`` and its raw-wire client.

        The one place model names are resolved: ``provider/model`` through the gateway's
        providers today (an alias resolver replaces it when the gateway has one).

        Args:
            name: The requested model.
            known: The names to list when ``name`` is unknown.

        Raises:
            NotFound: no configured provider serves ``name`` (``known`` lists what does).
            InvalidRequest: the provider is not OpenAI-compatible (code
                ``model_not_passthrough``).
        """
        provider_name, sep, model = name.partition("/")
        provider = self.models.providers.get(provider_name) if sep and model else None
        if provider is None:
            listed = known()
            raise NotFound(
                f"Model {name!r} is not known to Corral. Models you may use: "
                f"{', '.join(listed) or 'none'} (GET /v1/models lists them; names are "
                f"'provider/model' with a configured provider: "
                f"{', '.join(sorted(self.models.providers)) or 'none'}).",
                kind="model",
                name=name,
                known=listed,
            )
        cached = self._wires.get(provider_name)
        if cached is None or cached[0] is not provider:
            endpoint = getattr(provider, "wire_endpoint", None)
            if endpoint is None:
                reason = getattr(provider, "reason", None)
                if isinstance(reason, str):  # a provider that could not start says why
                    raise ModelAPIError(reason, provider=provider_name)
                raise InvalidRequest(
                    f"Model {name!r} is served by provider {provider_name!r}, which does not "
                    "speak the OpenAI chat completions wire format, so /v1/chat/completions "
                    "cannot pass calls to it; use a model of an OpenAI-compatible provider "
                    "(GET /v1/models), or run the agent on Corral.",
                    code="model_not_passthrough",
                )
            base_url, api_key, timeout = endpoint()
            cached = (provider, WireChat(provider_name, base_url, api_key, timeout_seconds=timeout))
            self._wires[provider_name] = cached
        served = Served(alias=name, deployment=name, provider=provider_name, model=model)
        return _Target(served, cached[1])

    # --- one call -----------------------------------------------------------------------------

    async def complete(self, principal: Principal, body: bytes) -> InboundReply:
        """Take one chat completions request through the governed path (see the module).

        Args:
            principal: The authenticated caller (an agent key, a service key, a user).
            body: The request body: OpenAI chat completions JSON.

        Returns:
            The upstream's JSON body, or its SSE stream (recorded when it ends).

        Raises:
            InvalidRequest: the body is not JSON or not a chat completions request, or the
                model's provider is not OpenAI-compatible.
            NotFound: no configured provider serves the model (names the known ones).
            Forbidden: an agent key's contract does not name the model, or the agent has no
                version at the endpoint's stage, or that version is retired.
            PolicyDenied: policy refuses ``model.call`` (code ``model_denied``).
            QuotaExceeded: a tenant model quota is used up.
            corral.errors.BudgetExceeded: a budget would be exceeded (from ``costs``).
            ModelAPIError: the upstream failed (status, transport, timeout).
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
        target = self.resolve(request.model, lambda: sorted(allowed or []))
        if allowed is not None and request.model not in allowed:
            raise Forbidden(
                f"Agent {agent!r} may not use model {request.model!r}: its contract names "
                f"{', '.join(sorted(allowed))} (spec.model.default, allowed, fallback).",
                code="model_not_allowed",
            )
        served = target.served
        trace_id = new_trace_id()
        with Tracing.trace(trace_id):
            span = self.tracing.tracer.start_span(
                f"chat {served.model}", context=otel_context.Context()
            )
        call = _Call(principal, trace_id, span, served, stream=request.stream)
        _request_attributes(span, principal, served, request)
        try:
            call.reservation = await self.costs.reserve(principal, served, request)
            await self._decide(call, spec, request)
            if self.quotas is not None:
                await self.quotas.check_model_call(principal.tenant_id)
            upstream = {**data, "model": served.model}
            if request.stream:
                opened = await target.wire.stream(upstream, forward_usage=request.wants_usage)
                return InboundReply(trace_id, stream=self._relay(call, opened))
            parsed, content = await target.wire.create(upstream)
        except CorralError as exc:
            await self._refused(call, exc)
            raise
        except BaseException:
            await self._refused(call, None)
            raise
        model = parsed.get("model")
        usage = usage_of(parsed.get("usage"))
        await self._finish(call, usage, model if isinstance(model, str) else None)
        return InboundReply(trace_id, content=content)

    async def _decide(
        self, call: _Call, spec: AgentSpec | None, request: ChatCompletionsRequest
    ) -> None:
        principal, served = call.principal, call.served
        assert served is not None and call.reservation is not None
        agent = _agent_of(principal)
        if agent is not None and spec is not None:
            ref = EntityRef("Agent", agent)
            entity = agent_entity(agent, principal.tenant_id, spec)
        else:
            ref, entity = _principal_entity(principal)
        model_ref = EntityRef("Model", served.alias)
        policy_request = PolicyRequest(
            principal=ref,
            action="model.call",
            resource=model_ref,
            context=PolicyContext(
                tenant=principal.tenant_id,
                stage=self.stage,
                requester=principal.id,
                estimated_cost_usd=call.reservation.estimated_cost_usd,
            ),
        )
        model_entity = Entity(model_ref, {"provider": served.provider, "name": served.model})
        authorization: Authorization = await self.governance.authorize(
            principal.tenant_id, policy_request, [entity, model_entity]
        )
        call.decision = authorization.row
        call.decision_id = authorization.decision.id
        if authorization.kind != "allow":
            message = authorization.denial(f"calling model {served.alias!r} for {principal.id}")
            if authorization.kind == "require_approval":
                message += (
                    "; inbound model calls cannot wait for an approval: ask an admin to change "
                    "the policy, or run the agent on Corral"
                )
            raise PolicyDenied(message, code="model_denied")

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
        cost = await self.costs.settle(
            call.reservation,
            principal=call.principal,
            served=served,
            usage=usage,
            trace_id=call.trace_id,
        )
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        shown = usage or Usage()
        seconds = time.perf_counter() - call.started
        observe_model_call(served.provider, served.model, seconds, usage=shown)
        count_model_cost(served.provider, served.model, cost)
        span.set_attribute("gen_ai.usage.input_tokens", shown.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", shown.output_tokens)
        span.set_attribute("corral.usage.cache_read_tokens", shown.cache_read_tokens)
        span.set_attribute("corral.usage.reasoning_tokens", shown.reasoning_tokens)
        span.set_attribute("corral.usage.missing", usage is None)
        if cost is not None:
            span.set_attribute("corral.cost_usd", str(cost))
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
        await self._record(call, "completed", details)

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

    async def _record(self, call: _Call, outcome: str, details: dict[str, Any]) -> None:
        """End the span; write decision, audit event and span rows in one transaction."""
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
                "stream": call.stream,
                "duration_ms": round((time.perf_counter() - call.started) * 1000, 3),
                **details,
            },
        )
        decisions = [call.decision] if call.decision is not None else []
        await self._records.write(
            tenant_id, call.trace_id, _Rows(decisions, audit, spans), wait=not self.defer_records
        )


@dataclass(frozen=True)
class _Rows:
    """What one call stores: its decision, its audit event, its span."""

    decisions: list[DecisionRow]
    audit: AuditRecord
    spans: list[dict[str, Any]]


class _RecordBatches:
    """Writes calls' rows with group commit: calls recorded while a write runs share the next.

    Every call's rows go in one transaction (with those of the other calls of its batch), so a
    call is recorded whole or not at all; with many concurrent calls one commit serves many.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[str, list[tuple[str, _Rows, asyncio.Future[None]]]] = {}
        self._flushing: asyncio.Task[None] | None = None

    async def write(self, tenant_id: str, trace_id: str, rows: _Rows, *, wait: bool) -> None:
        """Store ``rows`` in the next batch; with ``wait``, return once it is committed.

        Raises:
            CorralError: ``call_not_recorded`` (with ``wait``): the store refused the batch.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(tenant_id, []).append((trace_id, rows, done))
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
            for tenant_id, items in batches.items():
                await self._write(tenant_id, items)

    async def _write(
        self, tenant_id: str, items: list[tuple[str, _Rows, asyncio.Future[None]]]
    ) -> None:
        def write(connection: Connection) -> None:
            insert_decisions(connection, [d for _, rows, _ in items for d in rows.decisions])
            append_events(connection, tenant_id, [rows.audit for _, rows, _ in items])
            spans = [span for _, rows, _ in items for span in rows.spans]
            if spans:
                connection.execute(_SPAN_INSERT, spans)

        try:
            await self.store.run_sync(write, tenant_id)
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


def _request_attributes(
    span: Span, principal: Principal, served: Served, request: ChatCompletionsRequest
) -> None:
    span.set_attribute("gen_ai.operation.name", "chat")
    span.set_attribute("gen_ai.provider.name", served.provider)
    span.set_attribute("gen_ai.request.model", served.model)
    span.set_attribute("corral.principal", principal.id)
    span.set_attribute("corral.model.alias", served.alias)
    span.set_attribute("corral.model.channel", "inbound")
    span.set_attribute("corral.stream", request.stream)
    if request.max_output_tokens:
        span.set_attribute("gen_ai.request.max_tokens", request.max_output_tokens)
    if request.temperature is not None:
        span.set_attribute("gen_ai.request.temperature", request.temperature)
    if request.seed is not None:
        span.set_attribute("gen_ai.request.seed", request.seed)
