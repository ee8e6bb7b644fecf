"""Routes: ``/v1/prompts`` (versioned prompts; applied with ``POST /v1/apply``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from corral.api._deps import Caller, ReadSessionDep, requires
from corral.api._schemas import Page, PromptOut, PromptVersionOut
from corral.registry import list_prompt_versions, list_prompts, prompt_diff

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["registry"])


@router.get("/prompts", response_model=Page[PromptOut])
async def get_prompts(
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("agents.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[PromptOut]:
    """Prompts by name with their latest version, one page at a time."""
    rows = await list_prompts(session, tenant_id=caller.tenant_id, limit=limit, after=after)
    items = [
        PromptOut(
            name=prompt.name,
            latest_version=prompt.latest_version,
            digest=version.digest,
            description=version.document["spec"]["description"],
            updated_at=prompt.updated_at,
        )
        for prompt, version in rows
    ]
    return Page(items=items, next=items[-1].name if len(items) == limit else None)


@router.get("/prompts/{name}/versions", response_model=list[PromptVersionOut])
async def get_prompt_versions(
    name: str, session: ReadSessionDep, caller: Annotated[Caller, requires("agents.read")]
) -> list[PromptVersionOut]:
    """Every version of a prompt, newest first (its history), with its content."""
    rows = await list_prompt_versions(session, name, tenant_id=caller.tenant_id)
    return [
        PromptVersionOut(
            version=row.version,
            digest=row.digest,
            created_at=row.created_at,
            description=row.document["spec"]["description"],
            content=row.document["spec"]["content"],
        )
        for row in rows
    ]


@router.get("/prompts/{name}/diff")
async def get_prompt_diff(
    name: str,
    session: ReadSessionDep,
    caller: Annotated[Caller, requires("agents.read")],
    old: Annotated[str, Query(alias="from", description="The older version.")],
    new: Annotated[
        str | None, Query(alias="to", description="The newer version; omitted: the latest.")
    ] = None,
) -> dict[str, str]:
    """Unified diff of the content of two versions of a prompt (``diff``; empty: identical)."""
    text = await prompt_diff(session, name, old, new, tenant_id=caller.tenant_id)
    return {"diff": text}
