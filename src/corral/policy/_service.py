"""Governance at run time: the tenant's policy engine, the entities of a request, stored decisions.

The engine of a tenant is built from :data:`DEFAULT_POLICIES` plus the latest version of every
``Policy`` document the tenant applied, and cached by the digest of that set. A change applied in
this process is seen at once; one applied by another process within ``policy_refresh_seconds``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from opentelemetry import trace
from sqlalchemy import Connection, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral._singleflight import SingleFlightCache
from corral.audit import canonical_json
from corral.errors import InvalidRequest
from corral.policy._defaults import DEFAULT_POLICIES
from corral.policy._engine import PolicyEngine
from corral.policy._tables import PolicyDecisionRow, PolicyRow, PolicyVersionRow
from corral.policy._types import (
    Entity,
    EntityRef,
    EntitySet,
    PolicyDecision,
    PolicyRequest,
    PolicySource,
)
from corral.store import Store, insert_rows, utcnow

__all__ = [
    "EXPLAIN_DEFAULT_ATTRIBUTES",
    "TOOL_RISK",
    "Authorization",
    "DecisionRow",
    "Governance",
    "agent_entity",
    "arguments_digest",
    "decision_row",
    "insert_decisions",
    "policy_sources",
    "principal_ref",
    "redact",
    "tool_entity",
]

_DECISIONS = cast(Table, PolicyDecisionRow.__table__)
_POLICIES = cast(Table, PolicyRow.__table__)
_POLICY_VERSIONS = cast(Table, PolicyVersionRow.__table__)


def policy_sources(documents: Iterable[dict[str, Any]]) -> list[PolicySource]:
    """The defaults plus one source per stored Policy document (id ``name@version``)."""
    sources = list(DEFAULT_POLICIES)
    for document in documents:
        name, version = document["metadata"]["name"], document["metadata"].get("version")
        sources.append(PolicySource(id=f"{name}@{version}", text=document["spec"]["cedar"]))
    return sources


def tenant_policy_documents(connection: Connection, tenant_id: str) -> list[dict[str, Any]]:
    """The latest version of every Policy document of the tenant, by name."""
    rows = connection.execute(
        select(_POLICY_VERSIONS.c.document)
        .join(_POLICIES, _POLICIES.c.id == _POLICY_VERSIONS.c.policy_id)
        .where(
            _POLICIES.c.tenant_id == tenant_id,
            _POLICY_VERSIONS.c.version == _POLICIES.c.latest_version,
        )
        .order_by(_POLICIES.c.name)
    ).scalars()
    return [dict(document) for document in rows]


_SECRET_KEYS = (
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
)


def redact(value: Any) -> Any:
    """A copy of tool arguments safe to show approvers.

    Values under secret-looking keys (``token``, ``password``, ``api_key``...) become
    ``"[redacted]"``.
    """
    if isinstance(value, dict):
        return {
            key: "[redacted]" if any(s in str(key).lower() for s in _SECRET_KEYS) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of tool arguments: what an approval is bound to."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(arguments))).hexdigest()


def agent_entity(agent_name: str, tenant_id: str, spec: Any) -> Entity:
    """The Cedar entity of an agent (principal of tool and model calls, resource of invoke)."""
    return Entity(
        EntityRef("Agent", agent_name),
        {
            "tenant": tenant_id,
            "owner": spec.owner,
            "risk_tier": spec.risk_tier,
            "status": spec.status,
        },
    )


TOOL_RISK: Final[Mapping[str, str]] = {"read": "low", "write": "medium", "destructive": "high"}
"""A tool's ``risk`` attribute, from its side effect."""

EXPLAIN_DEFAULT_ATTRIBUTES: Final[Mapping[str, Mapping[str, object]]] = {
    "Agent": {"owner": "unknown", "risk_tier": "medium", "status": "active"},
    "Tool": {"owner": "corral", "side_effect": "read", "risk": "low", "kind": "builtin"},
    "User": {"roles": [], "groups": []},
    "ServiceAccount": {"roles": []},
    "Namespace": {},
}
"""Attributes ``policy explain`` (CLI and portal) gives an entity nothing else describes."""


def tool_entity(tool: Any, tenant_id: str) -> Entity:
    """The Cedar entity of a registered tool version (a ``ResolvedTool``)."""
    spec = tool.contract.spec
    return Entity(
        EntityRef("Tool", tool.name),
        {
            "tenant": tenant_id,
            "owner": tool.contract.metadata.labels.get("owner", "corral"),
            "side_effect": spec.side_effect,
            "risk": TOOL_RISK[spec.side_effect],
            "kind": spec.type,
        },
    )


def principal_ref(principal: str) -> EntityRef:
    """The Cedar entity of a principal name.

    ``user:alice`` -> ``User::"user:alice"``, ``service:ci`` -> ``ServiceAccount``,
    ``agent:x`` -> ``Agent``.
    """
    kind = principal.partition(":")[0]
    entity_type = {"service": "ServiceAccount", "agent": "Agent"}.get(kind, "User")
    return EntityRef(entity_type, principal)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One ``policy_decisions`` row: a decision, what it was asked, and when.

    Attributes:
        id: The decision's id (``pd_...``), referenced by audit events and approval requests.
        tenant_id: Tenant the decision was made in.
        action: The Cedar action (``tool.call``, ``secret.use``, ``model.call``...).
        principal: The principal's uid in Cedar syntax (``Agent::"repo-analyst"``).
        resource: The resource's uid in Cedar syntax (``Tool::"fs.read_file"``).
        decision: ``allow``, ``deny`` or ``require_approval``.
        determining_policies: Ids of the policies (or contract rules) that decided it.
        reasons: The ``@reason`` texts of those policies.
        approver_roles: Roles that may approve (``require_approval``).
        required_approvals: Approvals needed (``require_approval``; 0 otherwise).
        constraints: Constraints the decision carries.
        errors: Evaluation errors (an error denies).
        inputs_digest: ``sha256:`` digest of the request and entities.
        policy_set_digest: Digest of the policy set that decided.
        duration_us: Evaluation time in microseconds.
        run_id: The run it governed, or ``None`` (a direct call, a promotion).
        detail: Free-form detail, or ``None``.
        created_at: When it was made (UTC).
    """

    id: str
    tenant_id: str
    action: str
    principal: str
    resource: str
    decision: str
    determining_policies: list[str]
    reasons: list[str]
    approver_roles: list[str]
    required_approvals: int
    constraints: dict[str, Any]
    errors: list[str]
    inputs_digest: str
    policy_set_digest: str
    duration_us: float
    run_id: str | None
    detail: dict[str, Any] | None
    created_at: datetime

    @classmethod
    def of(
        cls,
        decision: PolicyDecision,
        request: PolicyRequest,
        *,
        tenant_id: str,
        run_id: str | None,
    ) -> DecisionRow:
        """The row of ``decision``, made for ``request`` (the time is now)."""
        return cls(
            decision.id,
            tenant_id,
            request.action,
            f'{request.principal.type}::"{request.principal.id}"',
            f'{request.resource.type}::"{request.resource.id}"',
            decision.decision,
            list(decision.determining_policies),
            list(decision.reasons),
            list(decision.approver_roles),
            decision.required_approvals,
            dict(decision.constraints),
            list(decision.errors),
            decision.inputs_digest,
            decision.policy_set_digest,
            decision.duration_us,
            run_id,
            None,
            utcnow(),
        )

    def as_row(self) -> dict[str, Any]:
        """The values to insert, by column name."""
        return {name: getattr(self, name) for name in _DECISION_COLUMNS}


_DECISION_COLUMNS = tuple(field.name for field in dataclasses.fields(DecisionRow))


def decision_row(
    decision: PolicyDecision,
    request: PolicyRequest,
    *,
    tenant_id: str,
    run_id: str | None,
) -> dict[str, Any]:
    """The ``policy_decisions`` row of a decision (see :class:`DecisionRow`)."""
    return DecisionRow.of(decision, request, tenant_id=tenant_id, run_id=run_id).as_row()


def insert_decisions(connection: Connection, rows: Sequence[dict[str, Any] | DecisionRow]) -> None:
    """Store decisions (in the transaction of the action they governed)."""
    if rows:
        insert_rows(
            connection,
            _DECISIONS,
            [row.as_row() if isinstance(row, DecisionRow) else row for row in rows],
        )


PathDecider = Callable[[Sequence[str]], list[bool]]
"""``decide(paths) -> [allowed, ...]``: see :meth:`Governance.path_decider`."""


@dataclass(frozen=True, slots=True)
class Authorization:
    """What :meth:`Governance.authorize` decided for one governed action.

    Attributes:
        decision: The decision (after the contract's approval rules, when given).
        request: The request decided.
        entities: The entities it was decided with.
        granted: Policy and rule ids already approved for this action.
        row: The ``policy_decisions`` row to store in the action's transaction.
        path_decider: For an allowed ``tool.call`` asked with ``path_guard=True``: the guard
            of the paths the tool reaches on its own (``None``: every path is decided as the
            call was).
    """

    decision: PolicyDecision
    request: PolicyRequest
    entities: list[Entity]
    granted: tuple[str, ...]
    row: DecisionRow
    path_decider: PathDecider | None = None

    @property
    def kind(self) -> str:
        """``allow``, ``deny`` or ``require_approval``."""
        return self.decision.decision

    @property
    def allowed(self) -> bool:
        """The action may go ahead now."""
        return self.decision.decision == "allow"

    def denial(self, what: str) -> str:
        """The message of a denial: ``policy denies {what}: reasons (policies ...)``."""
        decision = self.decision
        because = "; ".join(decision.reasons) or "no policy permits it"
        policies = ", ".join(decision.determining_policies) or "default deny"
        return f"policy denies {what}: {because} (policies: {policies}, decision {decision.id})"


class Governance:
    """Policy engines per tenant, built lazily and cached by the digest of their policy set.

    Args:
        store: Where Policy documents live.
        roles: Roles per principal (``{"user:alice": ["approver"]}``) until identity lands.
        refresh_seconds: How long a tenant's engine is used before the store is checked for
            Policy changes made by other processes.
        record_span: Records the ``policy.evaluate`` spans, one per decision made inside a
            recording span (a run's, a governed call's), as ``record_span(name, start_ns,
            attributes)``: the platform passes :func:`corral.observability.record_child_span`
            bound to its tracer (``corral.observability`` imports this package, so it cannot
            be imported here). ``None``: no spans.
    """

    def __init__(
        self,
        store: Store,
        *,
        roles: Mapping[str, list[str]] | None = None,
        refresh_seconds: float = 2.0,
        record_span: Callable[[str, int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.store = store
        self.record_span = record_span
        self.roles = dict(roles or {})
        # One reload per tenant at a time: callers without a session arriving while it runs
        # wait for it and take its engine (the tool phase's decisions otherwise all reload).
        self._engines: SingleFlightCache[str, PolicyEngine] = SingleFlightCache(
            ttl_seconds=refresh_seconds
        )
        self._by_digest: dict[str, PolicyEngine] = {}
        # Parsed entity sets by their content: an agent and a tool version look the same in
        # every call, and parsing them is a third of a decision's cost.
        self._entity_sets: dict[str, EntitySet] = {}

    @property
    def refresh_seconds(self) -> float:
        """How long a tenant's engine is used before the store is checked again (seconds)."""
        return self._engines.ttl_seconds

    @refresh_seconds.setter
    def refresh_seconds(self, seconds: float) -> None:
        self._engines.ttl_seconds = seconds

    def invalidate(self, tenant_id: str) -> None:
        """Forget the tenant's engine (its Policy documents changed in this process)."""
        self._engines.invalidate(tenant_id)

    async def engine(self, tenant_id: str, *, session: AsyncSession | None = None) -> PolicyEngine:
        """The tenant's engine (built from the defaults and its Policy documents).

        Cached for ``refresh_seconds``. Without ``session``, a cache miss is reloaded once per
        tenant: callers arriving during that reload wait for it and get its engine, or its
        error (with ``session``, the caller's own transaction reads them).

        Args:
            tenant_id: The tenant.
            session: The caller's open session, used when the engine must be (re)loaded. Pass
                it from inside a transaction: a second pooled connection opened while the
                transaction holds SQLite's write lock (or the last free connection) can wait on
                it forever.

        Raises:
            InvalidContract: A stored policy does not compile (not cached: the next call
                reloads).
        """
        engine = self._engines.peek(tenant_id)
        if engine is not None:
            return engine
        if session is not None:
            return await self._engines.get(
                tenant_id, lambda: self._load_in(session, tenant_id), shared=False
            )
        return await self._engines.get(tenant_id, lambda: self._load(tenant_id))

    async def _load(self, tenant_id: str) -> PolicyEngine:
        """The tenant's engine, read in a read-only session of its own."""
        async with self.store.read(tenant_id) as own:
            documents = await _policy_documents(own, tenant_id)
        return self._build(documents)

    async def _load_in(self, session: AsyncSession, tenant_id: str) -> PolicyEngine:
        """The tenant's engine, read in the caller's ``session``."""
        return self._build(await _policy_documents(session, tenant_id))

    def _build(self, documents: list[dict[str, Any]]) -> PolicyEngine:
        """The engine of ``documents``, shared by every tenant with the same policies.

        Raises:
            InvalidContract: A stored policy does not compile.
        """
        sources = policy_sources(documents)
        key = "|".join(f"{s.id}:{hash(s.text)}" for s in sources)
        engine = self._by_digest.get(key)
        if engine is None:
            engine = self._by_digest[key] = PolicyEngine(sources)
        return engine

    def principal_entity(
        self,
        principal: str,
        tenant_id: str,
        *,
        roles: Iterable[str] | None = None,
        groups: Iterable[str] = (),
    ) -> Entity:
        """The entity of a person or service account.

        Args:
            principal: ``user:...`` or ``service:...``.
            tenant_id: The tenant it acts in.
            roles: Its roles in that tenant, as identity resolved them; ``None``: the roles in
                the ``governance.roles`` setting (offline tools).
            groups: A user's groups (OIDC).
        """
        ref = principal_ref(principal)
        held = sorted(set(roles) if roles is not None else self.roles.get(principal, []))
        attrs: dict[str, object] = {"tenant": tenant_id, "roles": held}
        if ref.type == "User":
            attrs["groups"] = sorted(groups)
        return Entity(ref, attrs)

    async def decide(
        self,
        tenant_id: str,
        request: PolicyRequest,
        entities: list[Entity],
        *,
        approvals_granted: Iterable[str] = (),
        session: AsyncSession | None = None,
    ) -> PolicyDecision:
        """Evaluate one request with the tenant's engine (never raises: errors deny).

        ``session``: the caller's open session when it decides inside a transaction (see
        :meth:`engine`).
        """
        started = time.time_ns()
        decision = await self._decide(
            tenant_id, request, entities, approvals_granted=approvals_granted, session=session
        )
        self._span(request, decision, started)
        return decision

    async def _decide(
        self,
        tenant_id: str,
        request: PolicyRequest,
        entities: list[Entity],
        *,
        approvals_granted: Iterable[str] = (),
        session: AsyncSession | None = None,
    ) -> PolicyDecision:
        engine = await self.engine(tenant_id, session=session)
        return engine.evaluate(
            request, self._entity_set(engine, entities), approvals_granted=tuple(approvals_granted)
        )

    def evaluate(
        self, engine: PolicyEngine, request: PolicyRequest, entities: list[Entity]
    ) -> PolicyDecision:
        """:meth:`decide` with an engine already at hand (:meth:`engine`), from any thread."""
        started = time.time_ns()
        decision = engine.evaluate(request, self._entity_set(engine, entities))
        self._span(request, decision, started)
        return decision

    def _span(self, request: PolicyRequest, decision: PolicyDecision, started_ns: int) -> None:
        """Record a ``policy.evaluate`` span under the current span, if one is recording.

        Outside a recording span (an API request deciding ``agent.invoke``) nothing is
        recorded: such a span would belong to no stored trace.
        """
        if self.record_span is None or not trace.get_current_span().is_recording():
            return
        attributes: dict[str, Any] = {
            "corral.policy.action": request.action,
            "corral.policy.decision": decision.decision,
            "corral.policy.ids": list(decision.determining_policies),
            "corral.policy.decision_id": decision.id,
            "corral.policy.principal": f"{request.principal.type}::{request.principal.id}",
            "corral.policy.resource": f"{request.resource.type}::{request.resource.id}",
        }
        if decision.errors:
            attributes["error.type"] = "policy_evaluation_error"
        self.record_span("policy.evaluate", started_ns, attributes)

    def _entity_set(self, engine: PolicyEngine, entities: list[Entity]) -> EntitySet | list[Entity]:
        """The parsed entities, cached; the list itself when it does not parse.

        The engine turns entities that do not parse into a recorded deny.
        """
        key = repr(entities)
        entity_set = self._entity_sets.get(key)
        if entity_set is None:
            try:
                entity_set = engine.entities(entities)
            except InvalidRequest:
                return entities
            if len(self._entity_sets) >= 4096:
                self._entity_sets.clear()
            self._entity_sets[key] = entity_set
        return entity_set

    async def authorize(
        self,
        tenant_id: str,
        request: PolicyRequest,
        entities: list[Entity],
        *,
        approvals_granted: Iterable[str] = (),
        run_id: str | None = None,
        contract: tuple[str, Iterable[Any]] | None = None,
        path_guard: bool = False,
    ) -> Authorization:
        """Decide one governed action: the Cedar decision, its approvals and its row.

        The one entry point for every governed action (``tool.call`` today; ``model.call``,
        ``memory.*`` the same way): evaluate ``request``, apply the calling agent's own
        approval rules on top of an ``allow`` (:func:`contract_approvals`), and build the
        decision row the caller stores in the action's own transaction. Never raises:
        evaluation errors deny.

        Args:
            tenant_id: Tenant of the action.
            request: The request (principal, action, resource, context).
            entities: The principal and resource entities.
            approvals_granted: Policy and rule ids already approved for this very action.
            run_id: The run it happens in, stored with the decision; ``None`` outside runs.
            contract: ``(agent name, spec.approvals)`` of the calling agent, whose rules may
                turn an allow into ``require_approval`` for the resource named by
                ``request.resource.id``; ``None``: no contract rules.
            path_guard: For an allowed call, also build its path guard
                (:meth:`path_decider`).

        Returns:
            The :class:`Authorization`.
        """
        granted = tuple(approvals_granted)
        started = time.time_ns()
        decision = await self._decide(tenant_id, request, entities, approvals_granted=granted)
        if contract is not None:
            agent_name, rules = contract
            decision = contract_approvals(decision, agent_name, rules, request.resource.id, granted)
        self._span(request, decision, started)
        row = DecisionRow.of(decision, request, tenant_id=tenant_id, run_id=run_id)
        decider = None
        if path_guard and decision.decision == "allow":
            decider = await self.path_decider(
                tenant_id, request, entities, approvals_granted=granted
            )
        return Authorization(decision, request, entities, granted, row, decider)

    async def path_decider(
        self,
        tenant_id: str,
        request: PolicyRequest,
        entities: list[Entity],
        *,
        approvals_granted: Iterable[str] = (),
    ) -> PathDecider | None:
        """The path guard of an allowed call, for the paths a tool reaches on its own.

        A tool that walks a directory returns entries its ``path`` argument did not name; each
        must pass the decision the call passed, with ``context.path`` set to the entry's path
        (the same principal, action, resource, other context and granted approvals).

        Args:
            tenant_id: The call's tenant.
            request: The call's ``tool.call`` request, as decided.
            entities: The entities it was decided with.
            approvals_granted: The approvals granted to the call.

        Returns:
            ``decide(paths) -> [allowed, ...]``, one batched decision for many paths (``True``
            only for ``allow``: a path needing an approval the call lacks is refused), callable
            from any thread; ``None`` when no policy that can apply to the request reads
            ``context.path``, so every path is decided as the call was.
        """
        engine = await self.engine(tenant_id)
        if not engine.reads_path(request):
            return None
        entity_set = self._entity_set(engine, entities)
        granted = tuple(approvals_granted)

        def decide(paths: Sequence[str]) -> list[bool]:
            kinds = engine.decide_paths(request, entity_set, paths, approvals_granted=granted)
            return [kind == "allow" for kind in kinds]

        return decide


async def _policy_documents(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    return await session.run_sync(
        lambda sync: tenant_policy_documents(sync.connection(), tenant_id)
    )


def contract_approvals(
    decision: PolicyDecision,
    agent_name: str,
    rules: Iterable[Any],
    tool_name: str,
    granted: Iterable[str],
) -> PolicyDecision:
    """Apply an agent contract's own ``approvals`` rules on top of an ``allow``.

    A rule whose ``tools`` patterns match the tool turns an allow into ``require_approval``
    (its id ``agent:NAME/approvals[i]`` is what an approval grants); the contract can make a
    call stricter than policy, never looser. Managed runs and inbound MCP calls both use it.

    Args:
        decision: The policy decision for the call.
        agent_name: The agent whose contract holds ``rules``.
        rules: ``spec.approvals`` of the agent contract (``ApprovalRule``).
        tool_name: The tool called.
        granted: Rule and policy ids already approved for this call.
    """
    from corral.contracts import AgentTools  # contracts import the policy package

    if decision.decision != "allow":
        return decision
    done = set(granted)
    pending = [
        (f"agent:{agent_name}/approvals[{index}]", rule)
        for index, rule in enumerate(rules)
        if AgentTools(allowed=rule.tools).permits(tool_name)
    ]
    pending = [(rule_id, rule) for rule_id, rule in pending if rule_id not in done]
    if not pending:
        return decision
    return dataclasses.replace(
        decision,
        decision="require_approval",
        determining_policies=[rule_id for rule_id, _ in pending],
        reasons=[f"the contract of agent {agent_name!r} requires approval for {tool_name!r}"],
        approver_roles=sorted({rule.approver_role for _, rule in pending}),
        required_approvals=max(rule.required_approvals for _, rule in pending),
    )
