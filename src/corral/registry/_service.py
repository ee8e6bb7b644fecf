"""The registry: apply Agent and Tool documents as immutable, content-addressed versions."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import append_event, canonical_json
from corral.contracts import Agent, McpServer, Model, Policy, Prompt, Tool
from corral.errors import Conflict, Forbidden, InvalidContract, NotFound
from corral.policy import (
    PolicyEngine,
    PolicyRow,
    PolicyVersionRow,
    policy_sources,
    tenant_policy_documents,
)
from corral.registry._prompts import PendingPrompt, pending_of, resolve_instructions
from corral.registry._references import unmatched_tools
from corral.registry._tables import (
    AgentRow,
    AgentVersionRow,
    McpServerRow,
    McpServerVersionRow,
    ModelRow,
    ModelVersionRow,
    PromptRow,
    PromptVersionRow,
    StageBindingRow,
    ToolRow,
    ToolVersionRow,
)
from corral.store import new_id, utcnow

__all__ = [
    "FIRST_VERSION",
    "ApplyResult",
    "apply_documents",
    "bind_stage",
    "digest_of",
    "get_agent",
    "get_agent_version",
    "list_agent_versions",
    "list_agents",
    "list_tools",
    "next_patch",
]

FIRST_VERSION = "0.1.0"
"""Version given to the first version of an object whose document names none."""

Contract = Agent | McpServer | Model | Policy | Prompt | Tool


@dataclass(frozen=True)
class ApplyResult:
    """What applying one document did (or would do, in a dry run).

    Attributes:
        kind: ``Agent`` or ``Tool``.
        name: The object's name.
        action: ``created`` (new object), ``updated`` (new version) or ``unchanged``.
        version: The version now latest (or that would be).
        previous_version: The latest version before, if any.
        digest: ``sha256:<hex>`` of the document (version excluded).
        diff: Unified diff of the previous document's YAML against the new one.
        warnings: What looks wrong but was applied: for an Agent, each
            ``spec.tools.allowed`` entry that matches no registered tool.
    """

    kind: str
    name: str
    action: Literal["created", "updated", "unchanged"]
    version: str
    previous_version: str | None
    digest: str
    diff: str
    warnings: tuple[str, ...] = ()


def document_of(contract: Contract) -> dict[str, Any]:
    """The JSON document stored for a contract: aliases (``apiVersion``), defaults filled in."""
    return contract.model_dump(mode="json", by_alias=True)


def digest_of(contract: Contract) -> str:
    """``sha256:<hex>`` over the canonical JSON of the document without ``metadata.version``.

    Defaults are filled in before hashing, so omitting a field and writing its default give
    the same digest.
    """
    document = document_of(contract)
    document["metadata"].pop("version", None)
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def _semver(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


def next_patch(version: str) -> str:
    """``1.2.3`` -> ``1.2.4``."""
    major, minor, patch = _semver(version)
    return f"{major}.{minor}.{patch + 1}"


def _yaml(document: dict[str, Any] | None) -> list[str]:
    if document is None:
        return []
    return yaml.safe_dump(document, sort_keys=False).splitlines(keepends=True)


def _diff(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    return "".join(
        difflib.unified_diff(_yaml(old), _yaml(new), f"{name} (current)", f"{name} (applied)")
    )


async def apply_documents(
    session: AsyncSession,
    contracts: list[Contract],
    *,
    tenant_id: str,
    actor: str,
    dry_run: bool = False,
    strict: bool = False,
    endpoints_allowed: bool = True,
) -> list[ApplyResult]:
    """Apply documents in the caller's transaction: unchanged ones are no-ops.

    A changed document becomes a new immutable version: its ``metadata.version`` if given
    (it must be greater than the latest), else the latest with its patch bumped. Each new
    version appends an audit event. An Agent allowing a tool name or wildcard that matches
    no registered tool (those in ``contracts`` included) gets a warning in its result.

    Args:
        session: The caller's transaction.
        contracts: The documents, one per object.
        tenant_id: The tenant they belong to.
        actor: Principal recorded in the audit events.
        dry_run: Compute the results, write nothing.
        strict: Refuse the whole apply when any warning would be given.
        endpoints_allowed: Whether a ``Model`` deployment may name its own ``base_url``. Corral
            connects to that address from inside the operator's network, so only a platform
            admin may set one (a tenant's URL is an SSRF vector: cloud metadata, Corral's own
            API, internal services); tenants use the providers the platform configures.

    Returns:
        One result per document, in order.

    Raises:
        Forbidden: a ``Model`` deployment sets ``base_url`` and ``endpoints_allowed`` is false
            (code ``model_endpoint_forbidden``).
        Conflict: a given version already exists or is not greater than the latest; or the
            same object appears twice in ``contracts``.
        InvalidContract: a Policy that Cedar rejects; or, when ``strict``, an Agent tool
            entry that matches no registered tool (one issue per entry, with its field path).
    """
    if not endpoints_allowed:
        _refuse_endpoints(contracts)
    seen: set[tuple[str, str]] = set()
    applied: dict[int, ApplyResult] = {}
    prompts: list[PendingPrompt] = []
    # Prompts first: an Agent of the same apply may reference one of their new versions.
    for index in sorted(range(len(contracts)), key=lambda i: contracts[i].kind != "Prompt"):
        contract = contracts[index]
        key = (contract.kind, contract.metadata.name)
        if key in seen:
            raise Conflict(
                f"{contract.kind} {contract.metadata.name!r} appears twice; apply it once."
            )
        seen.add(key)
        if isinstance(contract, Agent):
            contract = await resolve_instructions(
                session, contract, tenant_id=tenant_id, pending=prompts
            )
        applied[index] = result = await _apply_one(
            session, contract, tenant_id=tenant_id, actor=actor, dry_run=dry_run
        )
        if isinstance(contract, Prompt):
            prompts.append(pending_of(contract, result.version))
    results = [applied[index] for index in range(len(contracts))]
    policies = [c for c in contracts if isinstance(c, Policy)]
    if policies:
        versions = {r.name: r.version for r in results if r.kind == "Policy"}
        await _validate_policy_set(session, policies, versions, tenant_id)
    unmatched = await unmatched_tools(session, contracts, tenant_id=tenant_id)
    if strict and unmatched:
        raise InvalidContract([u.issue() for u in unmatched])
    warnings: dict[int, list[str]] = {}
    for entry in unmatched:
        warnings.setdefault(entry.document, []).append(str(entry))
    return [replace(r, warnings=tuple(warnings.get(i, ()))) for i, r in enumerate(results)]


def _refuse_endpoints(contracts: list[Contract]) -> None:
    """Raise :class:`Forbidden` for the first ``Model`` deployment that names a ``base_url``."""
    for contract in contracts:
        if not isinstance(contract, Model):
            continue
        for index, deployment in enumerate(contract.spec.deployments):
            if deployment.base_url is not None:
                raise Forbidden(
                    f"Model {contract.metadata.name!r}: spec.deployments[{index}].base_url "
                    "may only be set by a platform admin, since Corral connects to that address "
                    "from inside its network. Remove base_url to use the endpoint the platform "
                    f"configures for provider {deployment.provider!r}, or ask a platform admin "
                    "to apply this Model.",
                    code="model_endpoint_forbidden",
                )


async def _validate_policy_set(
    session: AsyncSession, applied: list[Policy], versions: dict[str, str], tenant_id: str
) -> None:
    """Compile the tenant's policy set as it would be: refuse it whole if Cedar does.

    ``versions`` holds the version each applied document gets, so issues name the source as
    the engine will (``name@version``).

    Raises:
        InvalidContract: naming the policy id and Cedar's message.
    """
    stored = await session.run_sync(
        lambda sync: tenant_policy_documents(sync.connection(), tenant_id)
    )
    names = {p.metadata.name for p in applied}
    documents = [d for d in stored if d["metadata"]["name"] not in names]
    for policy in applied:
        document = document_of(policy)
        document["metadata"]["version"] = versions[policy.metadata.name]
        documents.append(document)
    PolicyEngine(policy_sources(documents))


async def bind_stage(
    session: AsyncSession,
    agent: AgentRow,
    version: AgentVersionRow,
    stage: str,
    *,
    actor: str,
    tenant_id: str,
) -> str | None:
    """Bind ``stage`` of ``agent`` to ``version``; returns the version bound before, if any."""
    binding = (
        await session.execute(
            select(StageBindingRow).where(
                StageBindingRow.agent_id == agent.id, StageBindingRow.stage == stage
            )
        )
    ).scalar_one_or_none()
    previous = None if binding is None else binding.version
    if binding is None:
        binding = StageBindingRow(
            id=new_id("bind"), tenant_id=tenant_id, agent_id=agent.id, stage=stage
        )
        session.add(binding)
    binding.version_id = version.id
    binding.version = version.version
    binding.bound_by = actor
    binding.bound_at = utcnow()
    await session.flush()
    return previous


async def _latest(session: AsyncSession, contract: Contract, tenant_id: str) -> tuple[Any, Any]:
    """The object's row and its latest version row, or ``(None, None)``."""
    name = contract.metadata.name
    query: Select[Any, Any]
    if isinstance(contract, Agent):
        query = (
            select(AgentRow, AgentVersionRow)
            .join(AgentVersionRow, AgentVersionRow.agent_id == AgentRow.id)
            .where(AgentRow.tenant_id == tenant_id, AgentRow.name == name)
            .where(AgentVersionRow.version == AgentRow.latest_version)
        )
    elif isinstance(contract, McpServer):
        query = (
            select(McpServerRow, McpServerVersionRow)
            .join(McpServerVersionRow, McpServerVersionRow.server_id == McpServerRow.id)
            .where(McpServerRow.tenant_id == tenant_id, McpServerRow.name == name)
            .where(McpServerVersionRow.version == McpServerRow.latest_version)
        )
    elif isinstance(contract, Model):
        query = (
            select(ModelRow, ModelVersionRow)
            .join(ModelVersionRow, ModelVersionRow.model_id == ModelRow.id)
            .where(ModelRow.tenant_id == tenant_id, ModelRow.name == name)
            .where(ModelVersionRow.version == ModelRow.latest_version)
        )
    elif isinstance(contract, Policy):
        query = (
            select(PolicyRow, PolicyVersionRow)
            .join(PolicyVersionRow, PolicyVersionRow.policy_id == PolicyRow.id)
            .where(PolicyRow.tenant_id == tenant_id, PolicyRow.name == name)
            .where(PolicyVersionRow.version == PolicyRow.latest_version)
        )
    elif isinstance(contract, Prompt):
        query = (
            select(PromptRow, PromptVersionRow)
            .join(PromptVersionRow, PromptVersionRow.prompt_id == PromptRow.id)
            .where(PromptRow.tenant_id == tenant_id, PromptRow.name == name)
            .where(PromptVersionRow.version == PromptRow.latest_version)
        )
    else:
        query = (
            select(ToolRow, ToolVersionRow)
            .join(ToolVersionRow, ToolVersionRow.tool_id == ToolRow.id)
            .where(ToolRow.tenant_id == tenant_id, ToolRow.name == name)
            .where(ToolVersionRow.version == ToolRow.latest_version)
        )
    found = (await session.execute(query)).one_or_none()
    return (None, None) if found is None else (found[0], found[1])


async def _apply_one(
    session: AsyncSession, contract: Contract, *, tenant_id: str, actor: str, dry_run: bool
) -> ApplyResult:
    name, kind = contract.metadata.name, contract.kind
    digest, document = digest_of(contract), document_of(contract)
    row, latest = await _latest(session, contract, tenant_id)
    if latest is not None and latest.digest == digest:
        return ApplyResult(kind, name, "unchanged", latest.version, latest.version, digest, "")
    explicit = contract.metadata.version
    if latest is None:
        version = explicit or FIRST_VERSION
    elif explicit is None:
        version = next_patch(latest.version)
    elif _semver(explicit) <= _semver(latest.version):
        raise Conflict(
            f"{kind} {name!r} version {explicit} is not greater than the latest version "
            f"{latest.version}, and the content differs; raise metadata.version or remove it "
            "to have the patch bumped."
        )
    else:
        version = explicit
    document["metadata"]["version"] = version
    result = ApplyResult(
        kind,
        name,
        "created" if latest is None else "updated",
        version,
        None if latest is None else latest.version,
        digest,
        _diff(name, None if latest is None else latest.document, document),
    )
    if not dry_run:
        await _store_version(session, contract, row, latest, result, document, tenant_id, actor)
    return result


async def _store_version(
    session: AsyncSession,
    contract: Contract,
    row: Any,
    latest: Any,
    result: ApplyResult,
    document: dict[str, Any],
    tenant_id: str,
    actor: str,
) -> None:
    now = utcnow()
    version_id = new_id("ver")
    version_row: (
        AgentVersionRow
        | ToolVersionRow
        | PolicyVersionRow
        | McpServerVersionRow
        | ModelVersionRow
        | PromptVersionRow
    )
    if isinstance(contract, Agent):
        if row is None:
            row = AgentRow(id=new_id("agt"), tenant_id=tenant_id, name=result.name, created_at=now)
            session.add(row)
        row.status = contract.spec.status
        version_row = AgentVersionRow(agent_id=row.id)
    elif isinstance(contract, Policy):
        if row is None:
            row = PolicyRow(id=new_id("pol"), tenant_id=tenant_id, name=result.name, created_at=now)
            session.add(row)
        version_row = PolicyVersionRow(policy_id=row.id)
    elif isinstance(contract, Model):
        if row is None:
            row = ModelRow(id=new_id("mdl"), tenant_id=tenant_id, name=result.name, created_at=now)
            session.add(row)
        version_row = ModelVersionRow(model_id=row.id)
    elif isinstance(contract, Prompt):
        if row is None:
            row = PromptRow(id=new_id("prm"), tenant_id=tenant_id, name=result.name, created_at=now)
            session.add(row)
        version_row = PromptVersionRow(prompt_id=row.id)
    elif isinstance(contract, McpServer):
        if row is None:
            row = McpServerRow(id=new_id("mcp"), tenant_id=tenant_id, name=result.name)
            row.created_at = now
            session.add(row)
        row.transport = contract.spec.transport
        version_row = McpServerVersionRow(server_id=row.id)
    else:
        if row is None:
            row = ToolRow(id=new_id("tool"), tenant_id=tenant_id, name=result.name, created_at=now)
            session.add(row)
        row.type = contract.spec.type
        row.side_effect = contract.spec.side_effect
        version_row = ToolVersionRow(tool_id=row.id)
    row.latest_version = result.version
    row.updated_at = now
    await session.flush()
    version_row.id = version_id
    version_row.tenant_id = tenant_id
    version_row.version = result.version
    version_row.ordinal = 1 if latest is None else latest.ordinal + 1
    version_row.digest = result.digest
    version_row.document = document
    version_row.created_at = now
    session.add(version_row)
    await session.flush()
    if isinstance(contract, Agent) and isinstance(version_row, AgentVersionRow):
        # The dev stage follows the latest version; other stages change only by promotion.
        await bind_stage(session, row, version_row, "dev", actor=actor, tenant_id=tenant_id)
    await append_event(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action=f"{result.kind.lower()}.{'created' if latest is None else 'version_created'}",
        subject=f"{result.kind.lower()}:{result.name}@{result.version}",
        outcome="success",
        details={"digest": result.digest, "previous_version": result.previous_version},
    )


async def list_agents(
    session: AsyncSession, *, tenant_id: str, limit: int = 100, after: str | None = None
) -> list[AgentRow]:
    """Agents ordered by name; ``after`` is the last name of the previous page."""
    query = select(AgentRow).where(AgentRow.tenant_id == tenant_id)
    if after:
        query = query.where(AgentRow.name > after)
    return list((await session.execute(query.order_by(AgentRow.name).limit(limit))).scalars())


async def latest_agent_versions(
    session: AsyncSession, agents: list[AgentRow], *, tenant_id: str
) -> dict[str, AgentVersionRow]:
    """The latest version of each of ``agents`` (one query), by agent id."""
    if not agents:
        return {}
    rows = await session.execute(
        select(AgentVersionRow)
        .join(
            AgentRow,
            (AgentRow.id == AgentVersionRow.agent_id)
            & (AgentRow.latest_version == AgentVersionRow.version),
        )
        .where(
            AgentVersionRow.tenant_id == tenant_id,
            AgentRow.id.in_([agent.id for agent in agents]),
        )
    )
    return {row.agent_id: row for row in rows.scalars()}


async def get_agent(session: AsyncSession, name: str, *, tenant_id: str) -> AgentRow:
    """The agent named ``name``.

    Raises:
        NotFound: listing the agents that do exist.
    """
    row = (
        await session.execute(
            select(AgentRow).where(AgentRow.tenant_id == tenant_id, AgentRow.name == name)
        )
    ).scalar_one_or_none()
    if row is None:
        known = list(
            (
                await session.execute(
                    select(AgentRow.name)
                    .where(AgentRow.tenant_id == tenant_id)
                    .order_by(AgentRow.name)
                    .limit(50)
                )
            ).scalars()
        )
        hint = f"known agents: {', '.join(known)}" if known else "no agents are registered"
        raise NotFound(
            f"Agent {name!r} not found ({hint}); register it with `corral apply -f FILE`.",
            kind="agent",
            name=name,
            known=known,
        )
    return row


async def list_agent_versions(
    session: AsyncSession, name: str, *, tenant_id: str
) -> list[AgentVersionRow]:
    """Every version of the agent, newest first.

    Raises:
        NotFound: no such agent.
    """
    agent = await get_agent(session, name, tenant_id=tenant_id)
    query = (
        select(AgentVersionRow)
        .where(AgentVersionRow.agent_id == agent.id)
        .order_by(AgentVersionRow.ordinal.desc())
    )
    return list((await session.execute(query)).scalars())


def spec_yaml(document: dict[str, Any]) -> str:
    """The canonical YAML of a stored document's ``spec``: keys sorted, block style.

    Two versions whose specs are equal give the same text, whatever order their YAML files
    wrote the keys in (the registry stores the validated document with defaults filled in).
    """
    spec = document.get("spec", {})
    return yaml.safe_dump(spec, sort_keys=True, default_flow_style=False, allow_unicode=True)


async def agent_version_diff(
    session: AsyncSession, name: str, old: str, new: str, *, tenant_id: str
) -> str:
    """Unified diff (:func:`difflib.unified_diff`) of two versions' specs as canonical YAML.

    Args:
        session: A session scoped to ``tenant_id``.
        name: The agent.
        old: The version the diff starts from (``-`` lines), e.g. ``1.0.0``.
        new: The version it ends at (``+`` lines).
        tenant_id: The caller's tenant; another tenant's agent reads as missing.

    Returns:
        The diff, headed ``--- {name}@{old}`` / ``+++ {name}@{new}``; empty when the specs
        are equal.

    Raises:
        NotFound: no such agent, or no such version (the message lists the versions).
    """
    _, before = await get_agent_version(session, name, old, tenant_id=tenant_id)
    _, after = await get_agent_version(session, name, new, tenant_id=tenant_id)
    return "".join(
        difflib.unified_diff(
            spec_yaml(before.document).splitlines(keepends=True),
            spec_yaml(after.document).splitlines(keepends=True),
            f"{name}@{before.version}",
            f"{name}@{after.version}",
        )
    )


async def get_agent_version(
    session: AsyncSession, name: str, version: str | None = None, *, tenant_id: str
) -> tuple[AgentRow, AgentVersionRow]:
    """The agent and one of its versions (``None``: the latest).

    Raises:
        NotFound: no such agent, or no such version (listing the versions).
    """
    agent = await get_agent(session, name, tenant_id=tenant_id)
    wanted = version or agent.latest_version
    row = (
        await session.execute(
            select(AgentVersionRow).where(
                AgentVersionRow.agent_id == agent.id, AgentVersionRow.version == wanted
            )
        )
    ).scalar_one_or_none()
    if row is None:
        versions = [
            v.version for v in await list_agent_versions(session, name, tenant_id=tenant_id)
        ]
        raise NotFound(
            f"Agent {name!r} has no version {wanted!r}; versions: {', '.join(versions)}.",
            kind="agent_version",
            name=f"{name}@{wanted}",
            known=versions,
        )
    return agent, row


async def list_tools(
    session: AsyncSession, *, tenant_id: str, limit: int = 100, after: str | None = None
) -> list[tuple[ToolRow, ToolVersionRow]]:
    """Tools with their latest version, ordered by name; ``after`` pages by name."""
    query = (
        select(ToolRow, ToolVersionRow)
        .join(
            ToolVersionRow,
            (ToolVersionRow.tool_id == ToolRow.id)
            & (ToolVersionRow.version == ToolRow.latest_version),
        )
        .where(ToolRow.tenant_id == tenant_id)
    )
    if after:
        query = query.where(ToolRow.name > after)
    rows = await session.execute(query.order_by(ToolRow.name).limit(limit))
    return [(tool, version) for tool, version in rows]
