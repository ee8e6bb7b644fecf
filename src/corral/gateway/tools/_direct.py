"""Tool calls from outside a managed run, through the pipeline a run's calls take.

Inbound MCP (``/mcp``) calls tools through :class:`DirectToolCalls` on behalf of an
authenticated principal. Each call resolves the tool versions offered to the principal (the
tenant's registered tools, latest version, minus quarantined MCP tools, minus, for an agent
principal, what the contract of the agent version bound to the endpoint's stage does not
allow), then goes through :class:`~corral.gateway.tools.CallPipeline` (validation,
canonicalisation, the ``tool.call`` decision for the calling ``User``, ``ServiceAccount`` or
``Agent``, execution, the ``execute_tool`` span) with this module's recorder, which:

* on ``require_approval``, raises an approval request bound to the principal, the tool and the
  SHA-256 digest of the canonical arguments (or points at the pending one already raised). Once
  approved, the principal repeats exactly that call before the request expires; that call spends
  the approval (its ``idempotency_key`` becomes ``direct:{call_id}``), so it covers one call;
* before a side-effecting call (or one spending an approval) commits its decision and a
  ``tool.call.started`` event, so no effect happens without a record;
* writes the rest (decisions, ``secret.use`` decisions and ``secret.used`` events, the
  ``tool.call`` audit event, the span, the approval request) in one transaction of its own. A
  store refusing it fails the call with :class:`~corral.gateway.tools.CallNotRecorded`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, and_, bindparam, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from corral.approvals import ApprovalRow, approval_request
from corral.audit import AuditRecord, append_events
from corral.contracts import AgentSpec, AgentTools
from corral.gateway.tools._base import ToolCallContext, ToolResult
from corral.gateway.tools._gateway import PreparedCall, ResolvedTool, ToolGateway
from corral.gateway.tools._pipeline import (
    CallNotRecorded,
    CallOutcome,
    CallPipeline,
    GovernedCall,
    tool_call_request,
)
from corral.observability import SpanRow, Tracing, new_trace_id
from corral.policy import (
    Authorization,
    DecisionRow,
    Entity,
    EntityRef,
    Governance,
    PolicyDecision,
    agent_entity,
    arguments_digest,
    insert_decisions,
    principal_ref,
    tool_entity,
)
from corral.registry import (
    AgentRow,
    AgentVersionRow,
    McpToolPinRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)
from corral.store import Store, execute_direct, insert_rows, new_id, utcnow
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


@dataclass(frozen=True)
class _Catalog:
    tools: list[tuple[str, str, dict[str, Any]]]
    quarantined: frozenset[str]
    agent_document: dict[str, Any] | None
    requests: list[Any]
    """Approval requests of the call being made (see :func:`_read_catalog`)."""


_APPROVAL_INSERT = _APPROVALS.insert()
_NO_CATALOG = _Catalog([], frozenset(), None, [])


@dataclass(frozen=True)
class _Offer:
    """A principal's resolved catalog (cached per tenant and agent), at ``version``."""

    version: tuple[Any, ...]
    spec: AgentSpec | None
    agent: tuple[EntityRef, Entity] | None
    """The agent's Cedar reference and entity (``None`` for people and service accounts)."""
    tools: dict[str, ResolvedTool]
    hidden: dict[str, str]


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
        # Not ``in_``: an expanding IN is rendered per execution (no direct execution).
        or_(_APPROVALS.c.status == "approved", _APPROVALS.c.status == "pending"),
        _APPROVALS.c.idempotency_key.is_(None),
    )
    .order_by(_APPROVALS.c.created_at)
)


# What a principal's catalog is built from, in one cheap statement: it changes whenever the
# catalog can. Tool versions are immutable and never deleted, so their count changes with every
# tool applied (new or new version: ``tools.latest_version`` moves only then); a pin's
# ``updated_at`` moves with each sync or approval (quarantine, restore); the binding of the
# agent's stage names an immutable agent version (a promotion, a rollback or a retired version
# applied moves it). Also whether the call has approval requests to read.
_TENANT_VERSIONS = (
    select(func.count())
    .select_from(_TOOL_VERSIONS)
    .where(_TOOL_VERSIONS.c.tenant_id == bindparam("b_tenant"))
    .scalar_subquery()
)
_PIN_COUNT = (
    select(func.count())
    .select_from(_PINS)
    .where(_PINS.c.tenant_id == bindparam("b_tenant"), _PINS.c.status == "QUARANTINED")
    .scalar_subquery()
)
_PIN_CHANGED = (
    select(func.max(_PINS.c.updated_at))
    .where(_PINS.c.tenant_id == bindparam("b_tenant"))
    .scalar_subquery()
)
_BOUND_VERSION = (
    select(_BINDINGS.c.version_id)
    .join(_AGENTS, _AGENTS.c.id == _BINDINGS.c.agent_id)
    .where(
        _AGENTS.c.tenant_id == bindparam("b_tenant"),
        _AGENTS.c.name == bindparam("b_agent"),
        _BINDINGS.c.stage == bindparam("b_stage"),
    )
    .scalar_subquery()
)
_HAS_REQUESTS = (
    select(func.count())
    .select_from(_CALL_APPROVALS.with_only_columns(_APPROVALS.c.id).order_by(None).subquery())
    .scalar_subquery()
)
_CATALOG_VERSION = {  # by (agent principal?, call?)
    (agent, call): select(
        _TENANT_VERSIONS,
        _PIN_COUNT,
        _PIN_CHANGED,
        *([_BOUND_VERSION] if agent else []),
        *([_HAS_REQUESTS] if call else []),
    )
    for agent in (False, True)
    for call in (False, True)
}


def _catalog_version(
    connection: Connection,
    tenant_id: str,
    agent_name: str | None,
    stage: str,
    call: tuple[str, str, str] | None,
) -> tuple[tuple[Any, ...], bool]:
    """``(version of the principal's catalog, whether the call has approval requests)``."""
    values: dict[str, Any] = {"b_tenant": tenant_id}
    if agent_name is not None:
        values |= {"b_agent": agent_name, "b_stage": stage}
    if call is not None:
        requested_by, tool, digest = call
        values |= {"b_requested_by": requested_by, "b_subject": f"tool:{tool}", "b_digest": digest}
    statement = _CATALOG_VERSION[agent_name is not None, call is not None]
    # Driver values (a SQLite timestamp as its text): the version is only compared with itself.
    (row,) = execute_direct(connection, statement, values)
    if call is None:
        return row, False
    return row[:-1], bool(row[-1])


def _read_catalog(
    connection: Connection,
    tenant_id: str,
    agent_name: str | None,
    stage: str,
    call: tuple[str, str, str] | None,
    *,
    tools: bool = True,
    requests: bool = True,
) -> _Catalog:
    """One snapshot of what a principal's call needs.

    The tenant's tools, its quarantined tools, the agent's contract (unless ``tools`` is
    false), and for ``call`` (``(requested_by, tool, arguments digest)``) when ``requests``
    is true, the call's approval requests: approved and unspent, or pending.
    """
    tenant = {"b_tenant": tenant_id}
    rows: list[Any] = []
    quarantined: frozenset[str] = frozenset()
    document = None
    if tools:
        rows = list(connection.execute(_TENANT_TOOLS, tenant).all())
        quarantined = frozenset(connection.execute(_QUARANTINED, tenant).scalars())
        if agent_name is not None:
            document = connection.execute(
                _AGENT_AT_STAGE, {**tenant, "b_agent": agent_name, "b_stage": stage}
            ).scalar_one_or_none()
    found = []
    if call is not None and requests:
        requested_by, tool, digest = call
        values = {"b_requested_by": requested_by, "b_subject": f"tool:{tool}", "b_digest": digest}
        found = list(connection.execute(_CALL_APPROVALS, {**tenant, **values}).all())
    return _Catalog(
        [(t.name, t.latest_version, dict(t.document)) for t in rows],
        quarantined,
        None if document is None else dict(document),
        found,
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
    decisions: list[DecisionRow],
    audit: list[AuditRecord],
    spans: list[dict[str, Any]],
    approval: dict[str, Any] | None,
    spend: tuple[str, str] | None = None,
) -> bool:
    """Store what a call produced, in one transaction; ``False`` if ``spend`` lost its race."""
    if spend is not None and not _spend(connection, tenant_id, *spend):
        return False
    if approval is not None:
        connection.execute(_APPROVAL_INSERT, [approval])
    insert_decisions(connection, decisions)
    if audit:
        append_events(connection, tenant_id, audit)
    insert_rows(connection, _SPANS, spans)
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
        self._pipeline = CallPipeline(tools, governance)
        self.governance = governance
        self.tracing = tracing
        self.stage = stage
        self.workspace = workspace
        self.approval_ttl = approval_ttl
        self._resolved: dict[tuple[str, str, str], ResolvedTool] = {}
        self._specs: dict[str, AgentSpec] = {}
        self._catalogs: dict[tuple[str, str | None], _Offer] = {}
        """What each (tenant, agent or ``None``) is offered, with the catalog version it is of."""

    async def offered(self, principal: Principal) -> list[ResolvedTool]:
        """The tools ``principal`` may call, by name: offered to it and not denied by policy.

        A tool policy would only allow with an approval is offered (a call then returns the
        approval to ask for). Listing decides with empty arguments and stores no decisions.
        """
        view = await self._view(principal)
        ctx = ToolCallContext(
            principal.tenant_id,
            None,
            0,
            0,
            None,
            frozenset(),
            stage=self.stage,
            requester=principal.id,
        )
        listing = GovernedCall(
            ctx,
            "",
            "",
            {},
            view.tools,
            view.entities,
            view.agent_tools,
            spec=view.spec if view.agent_name is not None else None,
        )
        offered = []
        for tool in view.tools.values():
            request = tool_call_request(listing, tool, {}, None)
            entities = [view.entities, tool_entity(tool, principal.tenant_id)]
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
        digest = arguments_digest(arguments)
        view = await self._view(principal, (principal.id, name, digest))
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
        recorder = _DirectRecorder(self, principal, view, ctx, digest, trace_id)
        governed = GovernedCall(
            ctx,
            call_id,
            name,
            arguments,
            view.tools,
            view.entities,
            view.agent_tools,
            spec=view.spec if view.agent_name is not None else None,
            granted=tuple(sorted({p for r in recorder.approved for p in r.policy_ids})),
            refusal=None if name in view.tools else _not_offered(view, name),
            channel="direct",
        )
        with Tracing.trace(trace_id):
            outcome = await self._pipeline.run(governed, recorder)
        result = recorder.finish(governed, outcome, trace_id)
        spans = self.tracing.exporter.drain(trace_id, tenant_id=principal.tenant_id, run_id=None)
        await recorder.write(
            functools.partial(
                _record,
                tenant_id=principal.tenant_id,
                decisions=recorder.decisions,
                audit=recorder.audit,
                spans=spans,
                approval=recorder.approval,
            )
        )
        return result

    # --- resolution ---------------------------------------------------------------------------

    async def _view(self, principal: Principal, call: tuple[str, str, str] | None = None) -> _View:
        """What ``principal`` may call, from the tenant's catalog cache when it is current.

        One statement reads the catalog's version (and whether ``call`` has approval
        requests); the catalog itself is read and resolved again only when its version moved,
        so a tool applied or quarantined, or an agent promoted or retired, counts from the
        next call on, in every process.
        """
        tenant_id, agent_name = principal.tenant_id, _agent_of(principal)
        key = (tenant_id, agent_name)
        cached = self._catalogs.get(key)
        stage = self.stage

        def read(connection: Connection) -> tuple[tuple[Any, ...], _Catalog]:
            version, has_requests = _catalog_version(connection, tenant_id, agent_name, stage, call)
            fresh = cached is None or cached.version != version
            if not fresh and not has_requests:
                return version, _NO_CATALOG
            catalog = _read_catalog(
                connection, tenant_id, agent_name, stage, call, tools=fresh, requests=has_requests
            )
            return version, catalog

        version, catalog = await self.store.read_sync(read, tenant_id)
        offer = cached
        if offer is None or offer.version != version:
            offer = self._offer(tenant_id, agent_name, version, catalog)
            if len(self._catalogs) >= 1024:
                self._catalogs.clear()
            self._catalogs[key] = offer
        ref, entity = offer.agent if offer.agent is not None else _principal_entity(principal)
        return _View(
            ref, entity, agent_name, offer.spec, offer.tools, offer.hidden, catalog.requests
        )

    def _offer(
        self, tenant_id: str, agent_name: str | None, version: tuple[Any, ...], catalog: _Catalog
    ) -> _Offer:
        spec = self._spec(catalog.agent_document)
        agent = None
        if agent_name is not None:
            ref = EntityRef("Agent", agent_name)
            entity = (
                agent_entity(agent_name, tenant_id, spec) if spec is not None else Entity(ref, {})
            )
            agent = (ref, entity)
        tools: dict[str, ResolvedTool] = {}
        hidden: dict[str, str] = {}
        for tool_name, tool_version, document in catalog.tools:
            reason = self._hidden_reason(tool_name, catalog, agent_name, spec)
            if reason is not None:
                hidden[tool_name] = reason
            else:
                tools[tool_name] = self._resolve(tenant_id, tool_name, tool_version, document)
        return _Offer(version, spec, agent, tools, hidden)

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


class _DirectRecorder:
    """The direct :class:`~corral.gateway.tools.CallRecorder` of one inbound call.

    Rows wait here and are written in one transaction of their own when the call ends
    (:meth:`write`); a side-effecting call, or one spending an approval, first commits its
    decision and a ``tool.call.started`` event (its idempotency record), so no effect happens
    without a record.
    """

    def __init__(
        self,
        calls: DirectToolCalls,
        principal: Principal,
        view: _View,
        ctx: ToolCallContext,
        digest: str,
        trace_id: str,
    ) -> None:
        self.calls, self.principal, self.view, self.ctx = calls, principal, view, ctx
        self.digest, self.trace_id, self.now = digest, trace_id, utcnow()
        self.approved = [
            r for r in view.requests if r.status == "approved" and r.expires_at > self.now
        ]
        self.decisions: list[DecisionRow] = []
        self.audit: list[AuditRecord] = []
        self.approval: dict[str, Any] | None = None
        self.spent: str | None = None
        self.waiting: tuple[str, datetime] | None = None
        """The approval request the call waits for, and when it expires."""

    def decided(self, row: DecisionRow) -> None:
        self.decisions.append(row)

    def secret_used(self, row: DecisionRow, audit: AuditRecord) -> None:
        self.decisions.append(row)
        self.audit.append(audit)

    async def approval_required(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization
    ) -> CallOutcome:
        """Point at the pending request for this exact call, or raise a new one."""
        now = self.now
        pending = [r for r in self.view.requests if r.status == "pending" and r.expires_at > now]
        if pending:
            self.waiting = (pending[0].id, pending[0].expires_at)
        else:
            request = approval_request(
                authorization.decision,
                tenant_id=self.principal.tenant_id,
                kind="tool_call",
                action="tool.call",
                subject=f"tool:{prepared.tool.name}",
                arguments=prepared.arguments,
                requested_by=self.principal.id,
                now=now,
                expires_at=now + self.calls.approval_ttl,
            )
            self.approval = request.as_row()
            self.waiting = (request.id, request.expires_at)
            self.audit.append(
                AuditRecord(
                    self.principal.id,
                    "approval.requested",
                    f"approval:{request.id}",
                    "pending",
                    trace_id=self.trace_id,
                    policy_decision_id=authorization.decision.id,
                    details={
                        "tool": prepared.tool.name,
                        "arguments_digest": request.arguments_digest,
                        "channel": "direct",
                    },
                )
            )
        return CallOutcome("APPROVAL_REQUIRED", None, call.ctx, authorization)

    async def before_execute(
        self, call: GovernedCall, prepared: PreparedCall, authorization: Authorization | None
    ) -> CallOutcome | None:
        """Commit the decision and ``tool.call.started`` before a side effect or a spend."""
        approvals = [r.id for r in self.approved]
        if not approvals and prepared.tool.contract.spec.side_effect == "read":
            return None
        decision_id = None if authorization is None else authorization.decision.id
        started = self._audit(call.name, "tool.call.started", "started", decision_id)
        for approval_id in [*approvals] or [None]:
            spend = None if approval_id is None else (approval_id, call.ctx.idempotency_key)
            recorded = await self.write(
                functools.partial(
                    _record,
                    tenant_id=self.principal.tenant_id,
                    decisions=self.decisions,
                    audit=[started],
                    spans=[],
                    approval=None,
                    spend=spend,
                )
            )
            if recorded:
                self.spent, self.decisions = approval_id, []
                return None
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
        return CallOutcome("DENIED", result, call.ctx, authorization)

    async def executed(
        self, call: GovernedCall, prepared: PreparedCall, result: ToolResult
    ) -> bool:
        return False

    async def write(self, write: Callable[[Connection], bool]) -> bool:
        """Run ``write`` in one transaction of its own.

        The caller waits for this commit: on SQLite it is made in the loop thread when the
        writer thread is idle and the write lock is free at once (no round trip through the
        writer thread, two thread wake-ups); otherwise by the writer thread, with others.

        Raises:
            CallNotRecorded: The store refused it (nothing of it was written).
        """
        tenant_id = self.principal.tenant_id
        try:
            return await self.calls.store.run_sync(write, tenant_id, inline_when_idle=True)
        except SQLAlchemyError as exc:
            raise CallNotRecorded(self.ctx.idempotency_key, exc) from exc

    def finish(self, call: GovernedCall, outcome: CallOutcome, trace_id: str) -> DirectCallResult:
        """The caller's result, and the call's ``tool.call`` audit event."""
        name, call_id, decision_id = call.name, call.call_id, outcome.decision_id
        if outcome.status == "APPROVAL_REQUIRED":
            assert self.waiting is not None and outcome.authorization is not None
            approval_id, expires_at = self.waiting
            tool = call.offered[name]
            decision = outcome.authorization.decision
            self.audit.append(
                self._audit(
                    name,
                    "tool.call",
                    "approval_required",
                    decision_id,
                    approval_id=approval_id,
                    tool_version=tool.version,
                )
            )
            return DirectCallResult(
                "APPROVAL_REQUIRED",
                name,
                call_id,
                _approval_text(name, decision, approval_id, expires_at),
                tool_version=tool.version,
                error_type="approval_required",
                policy_decision_id=decision.id,
                approval_id=approval_id,
                trace_id=trace_id,
            )
        result = outcome.result
        assert result is not None
        details: dict[str, Any] = {"tool_version": result.tool_version}
        details["error_type"] = result.error_type
        if result.skipped_by_policy:
            details["skipped_by_policy"] = result.skipped_by_policy
        if self.spent is not None:
            details["approval_id"] = self.spent
        self.audit.append(
            self._audit(name, "tool.call", result.status.lower(), decision_id, **details)
        )
        return DirectCallResult(
            result.status,
            name,
            call_id,
            outcome.untrusted_text(name, call_id),
            tool_version=result.tool_version,
            error_type=result.error_type,
            truncated=result.truncated,
            policy_decision_id=decision_id,
            approval_id=self.spent,
            trace_id=trace_id,
        )

    def _audit(
        self, name: str, action: str, outcome: str, decision_id: str | None, **details: Any
    ) -> AuditRecord:
        return AuditRecord(
            self.principal.id,
            action,
            f"tool:{name}",
            outcome,
            trace_id=self.trace_id,
            policy_decision_id=decision_id,
            details={
                "channel": "direct",
                "principal_kind": self.principal.kind,
                "idempotency_key": self.ctx.idempotency_key,
                **details,
            },
        )


def _not_offered(view: _View, name: str) -> ToolResult:
    reason, error_type = view.hidden.get(name), "tool_not_allowed"
    if reason is None:
        reason, error_type = f"tool {name!r} is not registered", "tool_not_registered"
    offered = ", ".join(sorted(view.tools)) or "none"
    message = f"{reason}; tools you may call: {offered}"
    return ToolResult("DENIED", message, error=message, error_type=error_type)


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
