"""The governed call: the one pipeline every tool call takes, from a managed run or from outside.

:meth:`CallPipeline.run` takes one :class:`GovernedCall` through (DESIGN.md, "The governed
call"):

resolve (the caller's: which tools the principal is offered; a refusal ends the call) ->
validate the arguments against the tool's JSON Schema -> canonicalise the ``path`` argument
(:meth:`ToolGateway.prepare`) -> decide ``tool.call`` (:meth:`Governance.authorize`, with the
agent contract's approval rules) -> on ``require_approval``, the recorder raises the approval
request (:func:`corral.approvals.approval_request`) -> the recorder's idempotency record (a
side-effecting call is recorded before it runs) -> :meth:`ToolGateway.execute`: rate limit,
credential injection (each ``secret.use`` decision handed to the recorder), timeout, retry and
circuit breaker, redaction, size cap -> the ``execute_tool`` span with the outcome. Output
reaches a model only fenced as untrusted (:attr:`CallOutcome.untrusted_text`).

Where the decision rows, audit events and spans are written is the :class:`CallRecorder`'s
business: a managed run's recorder batches them into the step's fenced checkpoint, the direct
recorder (inbound ``/mcp``) writes them in one transaction of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, Protocol

from opentelemetry import trace

from corral.audit import AuditRecord
from corral.contracts import AgentSpec, AgentTools
from corral.errors import CorralError
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._cache import tool_cache_digest
from corral.gateway.tools._gateway import PreparedCall, ResolvedTool, ToolGateway, wrap_untrusted
from corral.observability import CACHE_HIT_ATTRIBUTE, count_cache_lookup, count_tool_call
from corral.policy import (
    Authorization,
    DecisionRow,
    Entity,
    EntityRef,
    Governance,
    PolicyContext,
    PolicyRequest,
    tool_entity,
)

__all__ = [
    "CallNotRecorded",
    "CallOutcome",
    "CallPipeline",
    "CallRecorder",
    "CallStatus",
    "GovernedCall",
    "policy_denied",
    "tool_call_request",
]

log = logging.getLogger(__name__)

CallStatus = Literal["COMPLETED", "FAILED", "DENIED", "APPROVAL_REQUIRED", "STOPPED"]
"""How a call ended: the tool's result statuses, ``APPROVAL_REQUIRED`` (it waits for people)
or ``STOPPED`` (the recorder ended it before it ran: a cancelled run, a kill switch)."""


class CallNotRecorded(CorralError):
    """A call's records could not be stored (the database is down, full or refusing writes).

    The transaction that failed wrote nothing; the call is not reported as made. Attributes:
    ``idempotency_key`` of the call.
    """

    default_code = "call_not_recorded"

    def __init__(self, idempotency_key: str, cause: BaseException) -> None:
        detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        super().__init__(
            f"tool call {idempotency_key} could not be recorded, so it is not reported as "
            f"made and nothing of this write was stored: the store refused it "
            f"({type(cause).__name__}: {detail[0] if detail else 'no detail'}). Check the "
            "database (reachable, disk space, permissions) and repeat the call."
        )
        self.idempotency_key = idempotency_key


@dataclass(frozen=True)
class GovernedCall:
    """One tool call to take through the pipeline.

    Attributes:
        ctx: Who calls, from where (run, step, call index, workspace, stage, requester).
        call_id: The call's id (the model's, or ``call_...`` for a direct call).
        name: The tool called.
        arguments: Its arguments (a JSON object).
        offered: The tools offered to the principal, by name.
        principal: The caller as a Cedar entity (the principal of ``tool.call``).
        agent_tools: The calling agent's tool allow-list (``*`` for people and services).
        spec: The calling agent's contract: its approval rules apply and an explicit entry in
            its allow-list permits destructive tools; ``None`` for people and services.
        granted: Policy and rule ids already approved for exactly this call.
        refusal: The caller's own refusal from resolving the tool (not offered, quarantined);
            the call ends with it.
        channel: ``run`` or ``direct`` (a span attribute).
    """

    ctx: ToolCallContext
    call_id: str
    name: str
    arguments: dict[str, Any]
    offered: Mapping[str, ResolvedTool]
    principal: Entity
    agent_tools: AgentTools
    spec: AgentSpec | None = None
    granted: tuple[str, ...] = ()
    refusal: ToolResult | None = None
    channel: str = "run"

    @property
    def agent_name(self) -> str | None:
        """The calling agent's name, or ``None`` for a person or a service account."""
        return self.principal.uid.id if self.principal.uid.type == "Agent" else None


@dataclass(frozen=True)
class CallOutcome:
    """What the pipeline did with one call.

    Attributes:
        status: See :data:`CallStatus`.
        result: The tool's result (or the refusal); ``None`` when ``APPROVAL_REQUIRED`` or
            ``STOPPED``.
        ctx: The call's context as it executed (with its path guard).
        authorization: The ``tool.call`` decision, when policy was asked.
        executed: The tool ran (its output is untrusted data).
        prerecorded: The recorder already stored the call's final row (a side effect).
        stop: The recorder's own value for a call it ended (a run's pause or terminal, a
            direct call's approval request).
    """

    status: CallStatus
    result: ToolResult | None
    ctx: ToolCallContext
    authorization: Authorization | None = None
    executed: bool = False
    prerecorded: bool = False
    stop: Any = None

    @property
    def decision_id(self) -> str | None:
        """The stored ``tool.call`` decision's id, when policy was asked."""
        return None if self.authorization is None else self.authorization.decision.id

    def untrusted_text(self, name: str, call_id: str) -> str:
        """The text for the caller (``""`` without a result).

        Executed output fenced by :func:`wrap_untrusted`; else Corral's own message (a
        refusal, a validation failure).
        """
        if self.result is None:
            return ""
        if self.executed:
            return wrap_untrusted(name, call_id, self.result.output)
        return self.result.output


class CallRecorder(Protocol):
    """Where a call's rows go, and the steps that depend on where a call happens.

    A managed run's recorder batches rows into the step's fenced checkpoint; the direct
    recorder writes them in one transaction of its own. Methods that return a
    :class:`CallOutcome` end the call with it; ``None`` goes on.
    """

    def decided(self, row: DecisionRow) -> None:
        """Keep the ``tool.call`` decision row, to store with the call."""

    def secret_used(self, row: DecisionRow, audit: AuditRecord) -> None:
        """Keep a ``secret.use`` decision row and its ``secret.used`` audit event."""

    async def approval_required(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization
    ) -> CallOutcome:
        """Policy requires an approval: raise (or point at) the request; the call ends."""
        ...

    async def before_execute(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization | None
    ) -> CallOutcome | None:
        """The idempotency record of an allowed call, before it runs (or an outcome ending it)."""
        ...

    async def executed(
        self, call: GovernedCall, prepared: PreparedCall, result: ToolResult
    ) -> bool:
        """The call ran; record its outcome if it was recorded before. ``True``: recorded."""
        ...


def tool_call_request(
    call: GovernedCall, tool: ResolvedTool, arguments: dict[str, Any], path: str | None
) -> PolicyRequest:
    """The ``tool.call`` request of ``call`` for ``tool`` (``path`` canonicalised)."""
    ctx, url = call.ctx, arguments.get("url")
    return PolicyRequest(
        principal=call.principal.uid,
        action="tool.call",
        resource=EntityRef("Tool", tool.name),
        context=PolicyContext(
            tenant=ctx.tenant_id,
            stage=ctx.stage,
            requester=ctx.requester,
            arguments=arguments,
            path=path,
            url=url if isinstance(url, str) else None,
            # Only an explicit entry in an agent's contract, never a wildcard, counts.
            destructive_allowed=call.spec is not None and tool.name in call.spec.tools.allowed,
        ),
    )


def policy_denied(prepared: PreparedCall, authorization: Authorization) -> ToolResult:
    """The ``DENIED`` result of a call policy refused (reasons, policies, decision id)."""
    message = authorization.denial(f"calling {prepared.tool.name!r}")
    return ToolResult(
        "DENIED",
        message,
        error=message,
        error_type="policy_denied",
        tool_version=prepared.tool.version,
    )


class CallPipeline:
    """Takes tool calls through the governed path (see the module).

    Args:
        tools: The tool gateway (validation, canonicalisation, execution).
        governance: Decides ``tool.call``; ``None`` decides nothing (tests of the bare loop).
    """

    def __init__(self, tools: ToolGateway, governance: Governance | None) -> None:
        self.tools = tools
        self.governance = governance

    async def run(self, call: GovernedCall, recorder: CallRecorder) -> CallOutcome:
        """Take ``call`` through the pipeline, inside its ``execute_tool`` span.

        Each pass is counted in ``corral_tool_calls_total`` (a call that waited for an
        approval counts again when it is retried with the approval granted).

        Returns:
            The outcome. A refused, failing or approval-bound call is an outcome, not an error.

        Raises:
            Whatever the recorder raises (a lost lease, a store refusing writes); the call
            then counts as not made.
        """
        with self.tools.span(call.ctx, call.name, call.call_id) as record_span:
            span = trace.get_current_span()
            if call.ctx.principal:
                span.set_attribute("corral.principal", call.ctx.principal)
            span.set_attribute("corral.tool.channel", call.channel)
            outcome = await self._run(call, recorder)
            authorization = outcome.authorization
            count_tool_call(
                call.name if call.name in call.offered else None,
                None if authorization is None else authorization.kind,
                outcome.status,
            )
            span.set_attribute("corral.tool.outcome", outcome.status)
            if outcome.result is not None:
                record_span(outcome.result)
            elif outcome.status == "APPROVAL_REQUIRED":
                record_span(_approval_span_result(call, outcome))
        return outcome

    async def _run(self, call: GovernedCall, recorder: CallRecorder) -> CallOutcome:
        ctx = call.ctx
        if call.refusal is not None:
            return CallOutcome(call.refusal.status, call.refusal, ctx)
        prepared = self.tools.prepare(
            ctx, call.offered, call.name, call.arguments, agent_tools=call.agent_tools
        )
        if isinstance(prepared, ToolResult):
            return CallOutcome(prepared.status, prepared, ctx)
        authorization = await self._authorize(call, prepared)
        path_decider = None
        if authorization is not None:
            recorder.decided(authorization.row)
            if authorization.kind == "deny":
                denied = policy_denied(prepared, authorization)
                return CallOutcome("DENIED", denied, ctx, authorization)
            if authorization.kind == "require_approval":
                return await recorder.approval_required(call, prepared, authorization)
            path_decider = authorization.path_decider
        ctx = dataclasses.replace(
            ctx, path_decider=path_decider, on_secret_use=recorder.secret_used
        )
        call = dataclasses.replace(call, ctx=ctx)
        ended = await recorder.before_execute(call, prepared, authorization)
        if ended is not None:
            return ended
        result = await self._execute(call, prepared, authorization)
        prerecorded = await recorder.executed(call, prepared, result)
        return CallOutcome(
            result.status, result, ctx, authorization, executed=True, prerecorded=prerecorded
        )

    async def _execute(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization | None
    ) -> ToolResult:
        """Execute the decided call, or answer it from the tool-result cache.

        Only read-only tools that declare ``cache_ttl_seconds`` are cached (see
        :mod:`corral.gateway.tools._cache` for the key); only ``COMPLETED`` results are kept.
        """
        cache, spec = self.tools.result_cache, prepared.tool.contract.spec
        if cache is None or spec.cache_ttl_seconds is None or spec.side_effect != "read":
            return await self.tools.execute(call.ctx, prepared)
        uid = call.principal.uid
        digest = tool_cache_digest(
            call.ctx,
            prepared,
            caller=f"{uid.type}::{uid.id}",
            policy_set=None if authorization is None else authorization.decision.policy_set_digest,
        )
        tenant_id, span = call.ctx.tenant_id, trace.get_current_span()
        try:
            cached = await cache.get(tenant_id, digest)
        except Exception:  # a cache that cannot answer is a miss, never a failed call
            log.warning("tool-result cache lookup failed; executing the tool", exc_info=True)
            cached = None
        count_cache_lookup("tool", hit=cached is not None)
        span.set_attribute(CACHE_HIT_ATTRIBUTE, cached is not None)
        if cached is not None:
            return cached
        result = await self.tools.execute(call.ctx, prepared)
        if result.status == "COMPLETED":
            try:
                await cache.put(
                    tenant_id,
                    digest,
                    result,
                    tool=prepared.tool.name,
                    ttl=timedelta(seconds=spec.cache_ttl_seconds),
                )
            except Exception:  # the result stands; only its reuse is lost
                log.warning("tool-result cache write failed; not cached", exc_info=True)
        return result

    async def _authorize(self, call: GovernedCall, prepared: PreparedCall) -> Authorization | None:
        if self.governance is None:
            return None
        tool = prepared.tool
        request = tool_call_request(call, tool, prepared.arguments, prepared.path)
        agent_name = call.agent_name
        contract = (
            (agent_name, call.spec.approvals)
            if agent_name is not None and call.spec is not None
            else None
        )
        return await self.governance.authorize(
            call.ctx.tenant_id,
            request,
            [call.principal, tool_entity(tool, call.ctx.tenant_id)],
            approvals_granted=call.granted,
            run_id=call.ctx.run_id,
            contract=contract,
            path_guard=True,
        )


def _approval_span_result(call: GovernedCall, outcome: CallOutcome) -> ToolResult:
    """The span's view of a call waiting for an approval."""
    authorization = outcome.authorization
    reasons = "" if authorization is None else "; ".join(authorization.decision.reasons)
    message = f"approval required: {reasons or 'policy requires approval'}"
    tool = call.offered.get(call.name)
    return ToolResult(
        "DENIED",
        message,
        error=message,
        error_type="approval_required",
        tool_version=None if tool is None else tool.version,
    )
