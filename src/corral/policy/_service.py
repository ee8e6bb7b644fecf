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
from typing import Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

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
from corral.store import Store, utcnow

__all__ = [
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


_RISK = {"read": "low", "write": "medium", "destructive": "high"}


def tool_entity(tool: Any, tenant_id: str) -> Entity:
    """The Cedar entity of a registered tool version (a ``ResolvedTool``)."""
    spec = tool.contract.spec
    return Entity(
        EntityRef("Tool", tool.name),
        {
            "tenant": tenant_id,
            "owner": tool.contract.metadata.labels.get("owner", "corral"),
            "side_effect": spec.side_effect,
            "risk": _RISK[spec.side_effect],
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


def decision_row(
    decision: PolicyDecision,
    request: PolicyRequest,
    *,
    tenant_id: str,
    run_id: str | None,
) -> dict[str, Any]:
    """The ``policy_decisions`` row of a decision."""
    return {
        "id": decision.id,
        "tenant_id": tenant_id,
        "action": request.action,
        "principal": f'{request.principal.type}::"{request.principal.id}"',
        "resource": f'{request.resource.type}::"{request.resource.id}"',
        "decision": decision.decision,
        "determining_policies": list(decision.determining_policies),
        "reasons": list(decision.reasons),
        "approver_roles": list(decision.approver_roles),
        "required_approvals": decision.required_approvals,
        "constraints": dict(decision.constraints),
        "errors": list(decision.errors),
        "inputs_digest": decision.inputs_digest,
        "policy_set_digest": decision.policy_set_digest,
        "duration_us": decision.duration_us,
        "run_id": run_id,
        "detail": None,
        "created_at": utcnow(),
    }


def insert_decisions(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Store decisions (in the transaction of the action they governed)."""
    if rows:
        connection.execute(_DECISIONS.insert(), rows)


class Governance:
    """Policy engines per tenant, built lazily and cached by the digest of their policy set.

    Args:
        store: Where Policy documents live.
        roles: Roles per principal (``{"user:alice": ["approver"]}``) until identity lands.
        refresh_seconds: How long a tenant's engine is used before the store is checked for
            Policy changes made by other processes.
    """

    def __init__(
        self,
        store: Store,
        *,
        roles: Mapping[str, list[str]] | None = None,
        refresh_seconds: float = 2.0,
    ) -> None:
        self.store = store
        self.roles = dict(roles or {})
        self.refresh_seconds = refresh_seconds
        self._engines: dict[str, tuple[float, PolicyEngine]] = {}
        self._by_digest: dict[str, PolicyEngine] = {}
        # Parsed entity sets by their content: an agent and a tool version look the same in
        # every call, and parsing them is a third of a decision's cost.
        self._entity_sets: dict[str, EntitySet] = {}

    def invalidate(self, tenant_id: str) -> None:
        """Forget the tenant's engine (its Policy documents changed in this process)."""
        self._engines.pop(tenant_id, None)

    async def engine(self, tenant_id: str, *, session: AsyncSession | None = None) -> PolicyEngine:
        """The tenant's engine (built from the defaults and its Policy documents).

        Args:
            tenant_id: The tenant.
            session: The caller's open session, used when the engine must be (re)loaded. Pass
                it from inside a transaction: a second pooled connection opened while the
                transaction holds SQLite's write lock (or the last free connection) can wait on
                it forever.
        """
        cached = self._engines.get(tenant_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.refresh_seconds:
            return cached[1]
        if session is not None:
            documents = await _policy_documents(session, tenant_id)
        else:
            async with self.store.read(tenant_id) as own:
                documents = await _policy_documents(own, tenant_id)
        sources = policy_sources(documents)
        key = "|".join(f"{s.id}:{hash(s.text)}" for s in sources)
        engine = self._by_digest.get(key)
        if engine is None:
            engine = self._by_digest[key] = PolicyEngine(sources)
        self._engines[tenant_id] = (now, engine)
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
        engine = await self.engine(tenant_id, session=session)
        return engine.evaluate(
            request, self._entity_set(engine, entities), approvals_granted=tuple(approvals_granted)
        )

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

    async def path_decider(
        self,
        tenant_id: str,
        request: PolicyRequest,
        entities: list[Entity],
        *,
        approvals_granted: Iterable[str] = (),
    ) -> Callable[[Sequence[str]], list[bool]] | None:
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
