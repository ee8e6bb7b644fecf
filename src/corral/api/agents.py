"""Routes: ``/v1/agents``, ``/v1/tools`` and ``/v1/apply`` (the registry)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from corral.api._deps import Caller, PlatformDep, ReadSessionDep, SessionDep, requires
from corral.api._schemas import (
    AgentOut,
    AgentVersionOut,
    ApplyRequest,
    ApplyResultOut,
    Page,
    ToolOut,
)
from corral.contracts import Agent, EvalSuite, parse_document
from corral.errors import ContractIssue, InvalidContract
from corral.evals import apply_suites
from corral.registry import (
    ApplyResult,
    apply_documents,
    get_agent_version,
    latest_agent_versions,
    list_agent_versions,
    list_agents,
    list_tools,
)
from corral.tenancy import PLATFORM_ADMIN

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["registry"])


def _result(result: ApplyResult) -> ApplyResultOut:
    return ApplyResultOut.model_validate(result.__dict__)


def _parse_all(documents: list[dict[str, Any]]) -> list[Any]:
    contracts: list[Any] = []
    issues: list[ContractIssue] = []
    for index, document in enumerate(documents):
        try:
            contracts.append(parse_document(document))
        except InvalidContract as exc:
            issues.extend(
                ContractIssue("<request>", index, i.path, None, i.message) for i in exc.issues
            )
    if issues:
        raise InvalidContract(issues)
    return contracts


@router.post("/apply", response_model=list[ApplyResultOut])
async def apply(
    body: ApplyRequest, platform: PlatformDep, caller: Annotated[Caller, requires("agents.write")]
) -> list[ApplyResultOut]:
    """Apply Agent, Tool, Policy, Model, McpServer and EvalSuite documents in one transaction.

    All of them, or none; one result per document, in order.

    An Agent allowing a tool that matches no registered tool gets a warning in its result
    (``strict``: the apply is refused). Only a platform admin may give a ``Model`` deployment
    its own ``base_url`` (403 ``model_endpoint_forbidden`` otherwise).
    """
    parsed = _parse_all(body.documents)
    suites = [c for c in parsed if isinstance(c, EvalSuite)]
    contracts = [c for c in parsed if not isinstance(c, EvalSuite)]
    async with platform.store.transaction(caller.tenant_id) as session:
        results = await apply_documents(
            session,
            contracts,
            tenant_id=caller.tenant_id,
            actor=caller.principal,
            dry_run=body.dry_run,
            strict=body.strict,
            endpoints_allowed=PLATFORM_ADMIN in caller.roles,
        )
        # Eval suites are versioned by the evals domain; results keep the documents' order.
        suite_results = iter(
            await apply_suites(
                session,
                suites,
                tenant_id=caller.tenant_id,
                actor=caller.principal,
                dry_run=body.dry_run,
            )
        )
        registry_results = iter(results)
        results = [
            next(suite_results if isinstance(c, EvalSuite) else registry_results) for c in parsed
        ]
    if any(r.kind == "Policy" and r.action != "unchanged" for r in results) and not body.dry_run:
        # Committed: this process decides with the new set from the next decision on.
        platform.governance.invalidate(caller.tenant_id)
    if any(r.kind == "Model" and r.action != "unchanged" for r in results) and not body.dry_run:
        platform.model_catalog.invalidate(caller.tenant_id)
    return [_result(r) for r in results]


@router.get("/agents", response_model=Page[AgentOut])
async def get_agents(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("agents.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[AgentOut]:
    """Agents by name, one page at a time."""
    rows = await list_agents(session, tenant_id=caller.tenant_id, limit=limit, after=after)
    versions = await latest_agent_versions(session, rows, tenant_id=caller.tenant_id)
    tools = [t.name for t, _ in await list_tools(session, tenant_id=caller.tenant_id, limit=10_000)]
    items = [_agent_out(row, versions[row.id], tools) for row in rows]
    return Page(items=items, next=items[-1].name if len(items) == limit else None)


def _agent_out(agent: Any, version: Any, tools: list[str]) -> AgentOut:
    """An agent as its latest version describes it; ``tools`` are the registered tool names."""
    spec = Agent.model_validate(version.document).spec
    return AgentOut.model_validate(agent).model_copy(
        update={
            "description": spec.description,
            "owner": spec.owner,
            "risk_tier": spec.risk_tier,
            "digest": version.digest,
            "allowed_tools": [name for name in tools if spec.tools.permits(name)],
        }
    )


@router.post("/agents", response_model=ApplyResultOut)
async def post_agent(
    session: SessionDep,
    caller: Annotated[Caller, requires("agents.write")],
    document: Annotated[dict[str, Any], Body(description="An Agent document.")],
    dry_run: bool = False,
    strict: Annotated[
        bool, Query(description="Refuse an allowed tool that matches no registered tool.")
    ] = False,
) -> ApplyResultOut:
    """Register an agent, or a new version of it (a no-op when the spec is unchanged)."""
    contract = _parse_all([document])[0]
    if not isinstance(contract, Agent):
        raise InvalidContract(
            [ContractIssue("<request>", 0, "kind", None, "POST /v1/agents takes kind 'Agent'")]
        )
    results = await apply_documents(
        session,
        [contract],
        tenant_id=caller.tenant_id,
        actor=caller.principal,
        dry_run=dry_run,
        strict=strict,
    )
    return _result(results[0])


@router.get("/agents/{name}", response_model=AgentOut)
async def get_agent(
    name: str, session: ReadSessionDep, caller: Annotated[Caller, requires("agents.read")]
) -> AgentOut:
    """An agent, its latest version's digest and the tools it may call."""
    agent, version = await get_agent_version(session, name, tenant_id=caller.tenant_id)
    tools = [t.name for t, _ in await list_tools(session, tenant_id=caller.tenant_id, limit=10_000)]
    return _agent_out(agent, version, tools)


@router.get("/agents/{name}/versions", response_model=list[AgentVersionOut])
async def get_agent_versions(
    name: str, session: ReadSessionDep, caller: Annotated[Caller, requires("agents.read")]
) -> list[AgentVersionOut]:
    """Every version of an agent, newest first."""
    rows = await list_agent_versions(session, name, tenant_id=caller.tenant_id)
    return [
        AgentVersionOut(
            version=r.version, digest=r.digest, created_at=r.created_at, document=r.document
        )
        for r in rows
    ]


@router.get("/tools", response_model=Page[ToolOut])
async def get_tools(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("tools.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[ToolOut]:
    """Registered tools by name, one page at a time."""
    rows = await list_tools(session, tenant_id=caller.tenant_id, limit=limit, after=after)
    items = [
        ToolOut(
            name=tool.name,
            type=tool.type,
            side_effect=tool.side_effect,
            latest_version=tool.latest_version,
            digest=version.digest,
            description=version.document["spec"]["description"],
            input_schema=version.document["spec"]["input_schema"],
        )
        for tool, version in rows
    ]
    return Page(items=items, next=items[-1].name if len(items) == limit else None)
