"""Tool calls from outside a managed run, on the path a run's calls take.

Inbound MCP (``/mcp``) calls tools through :class:`DirectToolCalls` on behalf of an
authenticated principal. Each call (DESIGN.md, "Tool gateway"):

1. resolves the tool version offered to the principal: the tenant's registered tools (latest
   version), minus quarantined MCP tools, minus, for an agent principal, what the contract of the
   agent version bound to the endpoint's stage does not allow;
2. :meth:`ToolGateway.prepare`: the arguments are validated against the pinned JSON Schema and a
   ``path`` argument is canonicalised against the endpoint's workspace;
3. decides ``tool.call`` for the calling principal (``User``, ``ServiceAccount`` or ``Agent``),
   and stores the decision;
4. on ``require_approval``, raises an approval request bound to the principal, the tool and the
   SHA-256 digest of the canonical arguments (or points at the pending one already raised). Once
   approved, the principal repeats exactly that call before the request expires; that call spends
   the approval (its ``idempotency_key`` becomes ``direct:{call_id}``), so it covers one call;
5. :meth:`ToolGateway.execute` (timeout, output cap);
6. stores an audit event ``tool.call`` and the ``execute_tool`` span with the decision. A
   side-effecting call (or one spending an approval) first commits its decision and a
   ``tool.call.started`` event, so no effect happens without a record.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from opentelemetry import trace
from sqlalchemy import Connection, Table, and_, bindparam, select

from corral.approvals._tables import ApprovalRow
from corral.audit import AuditRecord, append_events
from corral.contracts import AgentSpec, AgentTools
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import PreparedCall, ResolvedTool, ToolGateway, wrap_untrusted
from corral.observability import Tracing, new_trace_id
from corral.observability._tables import SpanRow
from corral.policy import Entity, EntityRef, PolicyContext, PolicyDecision, PolicyRequest
from corral.policy._service import (
    Governance,
    agent_entity,
    arguments_digest,
    contract_approvals,
    decision_row,
    insert_decisions,
    principal_ref,
    redact,
    tool_entity,
)
from corral.registry._tables import (
    AgentRow,
    AgentVersionRow,
    McpToolPinRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)
from corral.store import Store, new_id, utcnow
from corral.tenancy import Principal

__all__ = ["DirectCallResult", "DirectCallStatus", "DirectToolCalls"]

_TOOLS = cast(Table, ToolRow.__table__)
_TOOL_VERSIONS = cast(Table, ToolVersionRow.__table__)
_PINS = cast(Table, McpToolPinRow.__table__)
_AGENTS = cast(Table, AgentRow.__table__)
_AGENT_VERSIONS = cast(Table, AgentVersionRow.__table__)
_BINDINGS = cast(Table, StageBindingRow.__table__)
_APPROVALS = cast(Table, ApprovalRow.__table__)
_SPANS = cast(Table, SpanRow.__table__)

DirectCallStatus = Literal["COMPLETED", "FAILED", "DENIED", "APPROVAL_REQUIRED"]
"""``COMPLETED``; ``FAILED`` (bad arguments or the tool failed); ``DENIED`` (not offered to
the principal, or refused by policy); ``APPROVAL_REQUIRED`` (an approval request is pending)."""


@dataclass(frozen=True)
class DirectCallResult:
    """The outcome of one call, as the caller sees it.

    Attributes:
        status: See :data:`DirectCallStatus`.
        tool: The tool's name as called.
        call_id: This call's id (``call_...``); its idempotency key is ``direct:{call_id}``.
        text: For the caller: the tool's output (or its error) fenced as untrusted data by
            :func:`wrap_untrusted`, or Corral's own explanation of a denial, a validation
            failure or the approval it waits for.
        tool_version: Version of the tool that resolved, if it did.
        error_type: Stable code when not ``COMPLETED`` (``policy_denied``,
            ``approval_required``, ``invalid_arguments``, ``tool_not_allowed``...).
        truncated: The output was cut to the size cap.
        policy_decision_id: The stored decision, if policy was asked.
        approval_id: The approval request the call waits for (``APPROVAL_REQUIRED``) or spent.
        trace_id: The call's trace (its ``execute_tool`` span).
    """

    status: DirectCallStatus
    tool: str
    call_id: str
    text: str
    tool_version: str | None = None
    error_type: str | None = None
    truncated: bool = False
    policy_decision_id: str | None = None
    approval_id: str | None = None
    trace_id: str = ""

    @property
    def is_error(self) -> bool:
        """Everything but ``COMPLETED`` (MCP ``isError``)."""
        return self.status != "COMPLETED"


@dataclass(frozen=True)
class _View:
    """What one principal may call, before policy."""

    principal: EntityRef
    entities: Entity
    agent_name: str | None
    spec: AgentSpec | None
    tools: dict[str, ResolvedTool]
    hidden: dict[str, str]
    """Registered tools not offered, with the reason."""
    requests: list[Any]
    """Approval requests of the call being made: approved and unspent, or pending."""

    @property
    def agent_tools(self) -> AgentTools:
        return self.spec.tools if self.spec is not None else AgentTools(allowed=["*"])


@dataclass
class _Outcome:
    """What one call decided and must store."""

    result: DirectCallResult
    tool_result: ToolResult | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    approval: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Catalog:
    tools: list[tuple[str, str, dict[str, Any]]]
    quarantined: frozenset[str]
    agent_document: dict[str, Any] | None
    requests: list[Any]
    """Approval requests of the call being made (see :func:`_read_catalog`)."""


# Statements are built once (building one costs several times executing it on SQLite).
_TENANT_TOOLS = (
    select(_TOOLS.c.name, _TOOLS.c.latest_version, _TOOL_VERSIONS.c.document)
    .join(
        _TOOL_VERSIONS,
        and_(
            _TOOL_VERSIONS.c.tool_id == _TOOLS.c.id,
            _TOOL_VERSIONS.c.version == _TOOLS.c.latest_version,
        ),
    )
    .where(_TOOLS.c.tenant_id == bindparam("b_tenant"))
    .order_by(_TOOLS.c.name)
)
_QUARANTINED = select(_PINS.c.tool_name).where(
    _PINS.c.tenant_id == bindparam("b_tenant"), _PINS.c.status == "QUARANTINED"
)
_AGENT_AT_STAGE = (
    select(_AGENT_VERSIONS.c.document)
    .join(_BINDINGS, _BINDINGS.c.version_id == _AGENT_VERSIONS.c.id)
    .join(_AGENTS, _AGENTS.c.id == _BINDINGS.c.agent_id)
    .where(
        _AGENTS.c.tenant_id == bindparam("b_tenant"),
        _AGENTS.c.name == bindparam("b_agent"),
        _BINDINGS.c.stage == bindparam("b_stage"),
    )
)
_CALL_APPROVALS = (
    select(_APPROVALS.c.id, _APPROVALS.c.status, _APPROVALS.c.policy_ids, _APPROVALS.c.expires_at)
    .where(
        _APPROVALS.c.tenant_id == bindparam("b_tenant"),
        _APPROVALS.c.run_id.is_(None),
        _APPROVALS.c.kind == "tool_call",
        _APPROVALS.c.requested_by == bindparam("b_requested_by"),
        _APPROVALS.c.subject == bindparam("b_subject"),
        _APPROVALS.c.arguments_digest == bindparam("b_digest"),
        _APPROVALS.c.status.in_(("approved", "pending")),
        _APPROVALS.c.idempotency_key.is_(None),
    )
    .order_by(_APPROVALS.c.created_at)
)


def _read_catalog(
    connection: Connection,
    tenant_id: str,
    agent_name: str | None,
    stage: str,
    call: tuple[str, str, str] | None,
) -> _Catalog:
    """One snapshot of what a principal's call needs.

    The tenant's tools, its quarantined tools, the agent's contract, and for ``call``
    (``(requested_by, tool, arguments digest)``) the call's approval requests: approved and
    unspent, or pending.
    """
    tenant = {"b_tenant": tenant_id}
    tools = connection.execute(_TENANT_TOOLS, tenant).all()
    quarantined = connection.execute(_QUARANTINED, tenant).scalars()
    document = None
    if agent_name is not None:
        document = connection.execute(
            _AGENT_AT_STAGE, {**tenant, "b_agent": agent_name, "b_stage": stage}
        ).scalar_one_or_none()
    requests = []
    if call is not None:
        requested_by, tool, digest = call
        values = {"b_requested_by": requested_by, "b_subject": f"tool:{tool}", "b_digest": digest}
        requests = list(connection.execute(_CALL_APPROVALS, {**tenant, **values}).all())
    return _Catalog(
        [(t.name, t.latest_version, dict(t.document)) for t in tools],
        frozenset(quarantined),
        None if document is None else dict(document),
        requests,
    )


def _spend(connection: Connection, tenant_id: str, approval_id: str, key: str) -> bool:
    """Mark an approved request used by the call ``key``; ``False`` if another call won."""
    row = connection.execute(
        _APPROVALS.update()
        .where(
            _APPROVALS.c.tenant_id == tenant_id,
            _APPROVALS.c.id == approval_id,
            _APPROVALS.c.status == "approved",
            _APPROVALS.c.idempotency_key.is_(None),
        )
        .values(idempotency_key=key)
        .returning(_APPROVALS.c.id)
    ).first()
    return row is not None


def _record(
    connection: Connection,
    *,
    tenant_id: str,
    decisions: list[dict[str, Any]],
    audit: list[AuditRecord],
    spans: list[dict[str, Any]],
    approval: dict[str, Any] | None,
    spend: tuple[str, str] | None = None,
) -> bool:
    """Store what a call produced, in one transaction; ``False`` if ``spend`` lost its race."""
    if spend is not None and not _spend(connection, tenant_id, *spend):
        return False
    if approval is not None:
        connection.execute(_APPROVALS.insert(), [approval])
    insert_decisions(connection, decisions)
    if audit:
        append_events(connection, tenant_id, audit)
    if spans:
        connection.execute(_SPANS.insert(), spans)
    return True


def _principal_entity(principal: Principal) -> tuple[EntityRef, Entity]:
    """The Cedar entity of a person or service account, with the roles identity resolved."""
    ref = principal_ref(principal.id)
    attrs: dict[str, object] = {"tenant": principal.tenant_id, "roles": sorted(principal.roles)}
    if ref.type == "User":
        attrs["groups"] = sorted(principal.groups)
    return ref, Entity(ref, attrs)


def _agent_of(principal: Principal) -> str | None:
    if principal.kind != "agent":
        return None
    return principal.agent or principal.id.partition(":")[2]


class DirectToolCalls:
    """Governed tool calls for principals outside managed runs (inbound MCP).

    Args:
        store: Where tools, decisions, approvals, audit events and spans live.
        tools: The tool gateway (the same one managed runs use).
        governance: Policy engines per tenant.
        tracing: Where ``execute_tool`` spans go (stored with each call's audit event).
        stage: ``context.stage`` of decisions; for agent principals, the stage whose bound
            agent version's contract lists the tools.
        workspace: Root the ``fs.*`` tools read, or ``None`` (they refuse).
        approval_ttl: How long an approval request stays open.
    """

    def __init__(
        self,
        store: Store,
        tools: ToolGateway,
        governance: Governance,
        tracing: Tracing,
        *,
        stage: str,
        workspace: Path | None = None,
        approval_ttl: timedelta = timedelta(days=1),
    ) -> None:
        self.store = store
        self.tools = tools
        self.governance = governance
        self.tracing = tracing
        self.stage = stage
        self.workspace = workspace
        self.approval_ttl = approval_ttl
        self._resolved: dict[tuple[str, str, str], ResolvedTool] = {}
        self._specs: dict[str, AgentSpec] = {}

    async def offered(self, principal: Principal) -> list[ResolvedTool]:
        """The tools ``principal`` may call, by name: offered to it and not denied by policy.

        A tool policy would only allow with an approval is offered (a call then returns the
        approval to ask for). Listing decides with empty arguments and stores no decisions.
        """
        view = await self._view(principal)
        offered = []
        for tool in view.tools.values():
            request, entities = self._request(principal, view, tool, {}, None)
            decision = await self.governance.decide(principal.tenant_id, request, entities)
            if decision.decision != "deny":
                offered.append(tool)
        return offered

    async def call(
        self,
        principal: Principal,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        call_id: str | None = None,
    ) -> DirectCallResult:
        """Call tool ``name`` for ``principal`` through the governed path (see the module).

        Args:
            principal: The authenticated caller.
            name: Tool name (``fs.read_file``).
            arguments: Tool arguments (a JSON object); ``None`` means ``{}``.
            call_id: This call's id; default a new ``call_...``.

        Returns:
            The result; never raises for a refused, failing or approval-bound call.
        """
        call_id = call_id or new_id("call")
        trace_id = new_trace_id()
        arguments = dict(arguments or {})
        view = await self._view(principal, (principal.id, name, arguments_digest(arguments)))
        ctx = ToolCallContext(
            principal.tenant_id,
            None,
            0,
            0,
            self.workspace,
            frozenset(view.tools),
            principal=principal.id,
            call_id=call_id,
            principal_entity=view.entities,
            stage=self.stage,
            requester=principal.id,
        )
        with Tracing.trace(trace_id), self.tools.span(ctx, name, call_id) as record_span:
            span = trace.get_current_span()
            span.set_attribute("corral.principal", principal.id)
            span.set_attribute("corral.tool.channel", "direct")
            outcome = await self._governed(principal, view, ctx, name, arguments)
            outcome.result = dataclasses.replace(outcome.result, trace_id=trace_id)
            span.set_attribute("corral.tool.outcome", outcome.result.status)
            record_span(outcome.tool_result or _as_tool_result(outcome.result))
        spans = self.tracing.exporter.drain(trace_id, tenant_id=principal.tenant_id, run_id=None)
        await self.store.run_sync(
            functools.partial(
                _record,
                tenant_id=principal.tenant_id,
                decisions=outcome.decisions,
                audit=outcome.audit,
                spans=spans,
                approval=outcome.approval,
            ),
            principal.tenant_id,
        )
        return outcome.result

    # --- resolution ---------------------------------------------------------------------------

    async def _view(self, principal: Principal, call: tuple[str, str, str] | None = None) -> _View:
        tenant_id, agent_name = principal.tenant_id, _agent_of(principal)
        async with self.store.read(tenant_id) as session:
            catalog = await session.run_sync(
                lambda sync: _read_catalog(
                    sync.connection(), tenant_id, agent_name, self.stage, call
                )
            )
        spec = self._spec(catalog.agent_document)
        if agent_name is not None:
            ref = EntityRef("Agent", agent_name)
            entity = (
                agent_entity(agent_name, tenant_id, spec) if spec is not None else Entity(ref, {})
            )
        else:
            ref, entity = _principal_entity(principal)
        tools: dict[str, ResolvedTool] = {}
        hidden: dict[str, str] = {}
        for tool_name, version, document in catalog.tools:
            reason = self._hidden_reason(tool_name, catalog, agent_name, spec)
            if reason is not None:
                hidden[tool_name] = reason
            else:
                tools[tool_name] = self._resolve(tenant_id, tool_name, version, document)
        return _View(ref, entity, agent_name, spec, tools, hidden, catalog.requests)

    def _hidden_reason(
        self, name: str, catalog: _Catalog, agent_name: str | None, spec: AgentSpec | None
    ) -> str | None:
        if name in catalog.quarantined:
            return (
                f"tool {name!r} is quarantined: its MCP server changed it since it was approved; "
                f"an admin re-approves it with `corral tools approve {name}@DIGEST`"
            )
        if agent_name is None:
            return None
        if spec is None:
            return (
                f"agent {agent_name!r} has no version bound to stage {self.stage!r}, so it may "
                f"call no tools here; promote one with `corral promote {agent_name} "
                f"--to {self.stage}`"
            )
        if spec.status == "retired":
            return f"agent {agent_name!r} is retired and may call no tools"
        if not spec.tools.permits(name):
            return f"tool {name!r} is not allowed to agent {agent_name!r} by its contract"
        return None

    def _spec(self, document: dict[str, Any] | None) -> AgentSpec | None:
        if document is None:
            return None
        key = repr(sorted(document.get("spec", {}).items()))
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) >= 1024:
                self._specs.clear()
            spec = self._specs[key] = AgentSpec.model_validate(document["spec"])
        return spec

    def _resolve(
        self, tenant_id: str, name: str, version: str, document: dict[str, Any]
    ) -> ResolvedTool:
        # Tool versions are immutable: a compiled validator is reused for as long as it lives.
        key = (tenant_id, name, version)
        tool = self._resolved.get(key)
        if tool is None:
            if len(self._resolved) >= 4096:
                self._resolved.clear()
            tool = self._resolved[key] = ResolvedTool.from_document(document)
        return tool

    # --- the governed path --------------------------------------------------------------------

    def _request(
        self,
        principal: Principal,
        view: _View,
        tool: ResolvedTool,
        arguments: dict[str, Any],
        path: str | None,
    ) -> tuple[PolicyRequest, list[Entity]]:
        url = arguments.get("url")
        request = PolicyRequest(
            principal=view.principal,
            action="tool.call",
            resource=EntityRef("Tool", tool.name),
            context=PolicyContext(
                tenant=principal.tenant_id,
                stage=self.stage,
                requester=principal.id,
                arguments=arguments,
                path=path,
                url=url if isinstance(url, str) else None,
                # As in runs: only an explicit entry in an agent's contract counts.
                destructive_allowed=view.spec is not None and tool.name in view.spec.tools.allowed,
            ),
        )
        return request, [view.entities, tool_entity(tool, principal.tenant_id)]

    async def _governed(
        self,
        principal: Principal,
        view: _View,
        ctx: ToolCallContext,
        name: str,
        arguments: dict[str, Any],
    ) -> _Outcome:
        if name not in view.tools:
            return self._not_offered(principal, view, ctx, name)
        prepared = self.tools.prepare(
            ctx, view.tools, name, arguments, agent_tools=view.agent_tools
        )
        if isinstance(prepared, ToolResult):
            return self._finished(principal, ctx, name, prepared, None, executed=False)
        digest, requests, now = arguments_digest(prepared.arguments), view.requests, utcnow()
        approved = [r for r in requests if r.status == "approved" and r.expires_at > now]
        granted = {policy for r in approved for policy in r.policy_ids}
        request, entities = self._request(principal, view, prepared.tool, arguments, prepared.path)
        decision = await self.governance.decide(
            principal.tenant_id, request, entities, approvals_granted=granted
        )
        if view.spec is not None and view.agent_name is not None:
            decision = contract_approvals(
                decision, view.agent_name, view.spec.approvals, name, granted
            )
        row = decision_row(decision, request, tenant_id=principal.tenant_id, run_id=None)
        if decision.decision == "deny":
            denied = _policy_denied(prepared, decision)
            outcome = self._finished(principal, ctx, name, denied, decision.id, executed=False)
        elif decision.decision == "require_approval":
            pending = [r for r in requests if r.status == "pending" and r.expires_at > now]
            outcome = self._approval_required(principal, ctx, prepared, decision, digest, pending)
        else:
            decider = await self.governance.path_decider(
                principal.tenant_id, request, entities, approvals_granted=granted
            )
            ctx = dataclasses.replace(ctx, path_decider=decider)
            return await self._execute(principal, ctx, prepared, row, [r.id for r in approved])
        outcome.decisions.insert(0, row)
        return outcome

    async def _execute(
        self,
        principal: Principal,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        row: dict[str, Any],
        approvals: list[str],
    ) -> _Outcome:
        """Execute an allowed call; a side effect or a spent approval is recorded first."""
        tool, spent, recorded = prepared.tool, None, False
        if approvals or tool.contract.spec.side_effect != "read":
            started = self._audit(principal, ctx, tool.name, "tool.call.started", "started", row)
            attempts: list[str | None] = [*approvals] or [None]
            for approval_id in attempts:
                spend = None if approval_id is None else (approval_id, ctx.idempotency_key)
                recorded = await self.store.run_sync(
                    functools.partial(
                        _record,
                        tenant_id=principal.tenant_id,
                        decisions=[row],
                        audit=[started],
                        spans=[],
                        approval=None,
                        spend=spend,
                    ),
                    principal.tenant_id,
                )
                if recorded:
                    spent = approval_id
                    break
            if not recorded:
                return self._approval_spent(principal, ctx, prepared, row)
        result = await self.tools.execute(ctx, prepared)
        details = {} if spent is None else {"approval_id": spent}
        outcome = self._finished(principal, ctx, tool.name, result, row["id"], details=details)
        outcome.decisions = [] if recorded else [row]
        outcome.result = dataclasses.replace(outcome.result, approval_id=spent)
        return outcome

    # --- outcomes ----------------------------------------------------------------------------

    def _audit(
        self,
        principal: Principal,
        ctx: ToolCallContext,
        name: str,
        action: str,
        outcome: str,
        decision: dict[str, Any] | None,
        **details: Any,
    ) -> AuditRecord:
        return AuditRecord(
            principal.id,
            action,
            f"tool:{name}",
            outcome,
            trace_id=_current_trace_id(),
            policy_decision_id=None if not decision else decision["id"],
            details={
                "channel": "direct",
                "principal_kind": principal.kind,
                "idempotency_key": ctx.idempotency_key,
                **details,
            },
        )

    def _finished(
        self,
        principal: Principal,
        ctx: ToolCallContext,
        name: str,
        result: ToolResult,
        decision_id: str | None,
        *,
        executed: bool = True,
        details: dict[str, Any] | None = None,
    ) -> _Outcome:
        """A call that ran (its output is fenced as untrusted) or was refused by Corral."""
        call_id = ctx.call_id or ""
        text = wrap_untrusted(name, call_id, result.output) if executed else result.output
        audit = self._audit(
            principal,
            ctx,
            name,
            "tool.call",
            result.status.lower(),
            {"id": decision_id} if decision_id else None,
            tool_version=result.tool_version,
            error_type=result.error_type,
            **({"skipped_by_policy": result.skipped_by_policy} if result.skipped_by_policy else {}),
            **(details or {}),
        )
        public = DirectCallResult(
            result.status,
            name,
            call_id,
            text,
            tool_version=result.tool_version,
            error_type=result.error_type,
            truncated=result.truncated,
            policy_decision_id=decision_id,
        )
        return _Outcome(public, result, audit=[audit])

    def _not_offered(
        self, principal: Principal, view: _View, ctx: ToolCallContext, name: str
    ) -> _Outcome:
        reason, error_type = view.hidden.get(name), "tool_not_allowed"
        if reason is None:
            reason, error_type = f"tool {name!r} is not registered", "tool_not_registered"
        offered = ", ".join(sorted(view.tools)) or "none"
        message = f"{reason}; tools you may call: {offered}"
        result = ToolResult("DENIED", message, error=message, error_type=error_type)
        return self._finished(principal, ctx, name, result, None, executed=False)

    def _approval_required(
        self,
        principal: Principal,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        decision: PolicyDecision,
        digest: str,
        pending: list[Any],
    ) -> _Outcome:
        """Point at the pending request for this exact call, or raise a new one."""
        tool, now = prepared.tool, utcnow()
        approval: dict[str, Any] | None = None
        if pending:
            approval_id, expires_at = pending[0].id, pending[0].expires_at
        else:
            approval_id, expires_at = new_id("apr"), now + self.approval_ttl
            approval = _approval_row(principal, tool.name, prepared, decision, digest, now)
            approval.update(id=approval_id, expires_at=expires_at)
        text = _approval_text(tool.name, decision, approval_id, expires_at)
        audit = [
            self._audit(
                principal,
                ctx,
                tool.name,
                "tool.call",
                "approval_required",
                {"id": decision.id},
                approval_id=approval_id,
                tool_version=tool.version,
            )
        ]
        if approval is not None:
            audit.insert(
                0,
                AuditRecord(
                    principal.id,
                    "approval.requested",
                    f"approval:{approval_id}",
                    "pending",
                    trace_id=_current_trace_id(),
                    policy_decision_id=decision.id,
                    details={"tool": tool.name, "arguments_digest": digest, "channel": "direct"},
                ),
            )
        public = DirectCallResult(
            "APPROVAL_REQUIRED",
            tool.name,
            ctx.call_id or "",
            text,
            tool_version=tool.version,
            error_type="approval_required",
            policy_decision_id=decision.id,
            approval_id=approval_id,
        )
        return _Outcome(public, None, audit=audit, approval=approval)

    def _approval_spent(
        self,
        principal: Principal,
        ctx: ToolCallContext,
        prepared: PreparedCall,
        row: dict[str, Any],
    ) -> _Outcome:
        message = (
            f"the approval for this call of {prepared.tool.name!r} was spent by a concurrent "
            "identical call; repeat the call to request a new approval"
        )
        result = ToolResult(
            "DENIED",
            message,
            error=message,
            error_type="approval_spent",
            tool_version=prepared.tool.version,
        )
        outcome = self._finished(
            principal, ctx, prepared.tool.name, result, row["id"], executed=False
        )
        outcome.decisions = [row]
        return outcome


def _approval_row(
    principal: Principal,
    tool_name: str,
    prepared: PreparedCall,
    decision: PolicyDecision,
    digest: str,
    now: datetime,
) -> dict[str, Any]:
    return {
        "tenant_id": principal.tenant_id,
        "kind": "tool_call",
        "status": "pending",
        "action": "tool.call",
        "subject": f"tool:{tool_name}",
        "run_id": None,
        "step_index": None,
        "call_index": None,
        "idempotency_key": None,
        "arguments_redacted": redact(prepared.arguments),
        "arguments_digest": digest,
        "reason": "; ".join(decision.reasons) or "policy requires approval",
        "approver_roles": list(decision.approver_roles),
        "required_approvals": max(decision.required_approvals, 1),
        "policy_ids": list(decision.determining_policies),
        "policy_decision_id": decision.id,
        "requested_by": principal.id,
        "created_at": now,
        "decided_at": None,
    }


def _approval_text(
    tool_name: str, decision: PolicyDecision, approval_id: str, expires_at: datetime
) -> str:
    reasons = "; ".join(decision.reasons) or "policy requires approval"
    roles = " or ".join(decision.approver_roles) or "an approver"
    count = max(decision.required_approvals, 1)
    return (
        f"Calling {tool_name!r} with these arguments needs {count} approval(s) from {roles}: "
        f"{reasons}. Approval request {approval_id} is pending. A holder of that role approves "
        f"it with `corral approve {approval_id}` (or POST /v1/approvals/{approval_id}/approve), "
        f"or rejects it with `corral reject {approval_id} --reason ...`. Once it is approved, "
        f"repeat exactly this call (same tool, same arguments) before "
        f"{expires_at.isoformat(timespec='seconds')}; the approval covers that one call."
    )


def _policy_denied(prepared: PreparedCall, decision: PolicyDecision) -> ToolResult:
    because = "; ".join(decision.reasons) or "no policy permits it"
    message = (
        f"policy denies calling {prepared.tool.name!r}: {because} (policies: "
        f"{', '.join(decision.determining_policies) or 'default deny'}, "
        f"decision {decision.id})"
    )
    return ToolResult(
        "DENIED",
        message,
        error=message,
        error_type="policy_denied",
        tool_version=prepared.tool.version,
    )


def _current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _as_tool_result(result: DirectCallResult) -> ToolResult:
    """The span's view of a call that did not execute (approval required)."""
    status = "DENIED" if result.status == "APPROVAL_REQUIRED" else result.status
    return ToolResult(
        status,
        result.text,
        error=result.text,
        error_type=result.error_type,
        tool_version=result.tool_version,
    )
