"""Prompts: versioned instructions, and their resolution into the agents that reference them.

An agent names a prompt version as ``instructions_ref: prompts/NAME@VERSION``. Applying the agent
resolves the reference in the applying tenant and stores the prompt's content as the version's
``instructions`` (next to the reference), so a stored agent version carries its instructions,
the runtime never reads prompts, and the content (which the prompt's digest covers) is part of
the agent version's digest.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Agent, Prompt
from corral.errors import ContractIssue, InvalidContract, NotFound
from corral.registry._tables import PromptRow, PromptVersionRow

__all__ = [
    "PendingPrompt",
    "get_prompt_version",
    "list_prompt_versions",
    "list_prompts",
    "prompt_diff",
    "resolve_instructions",
]


@dataclass(frozen=True)
class PendingPrompt:
    """A prompt version of the apply in progress (stored or not: a dry run stores nothing)."""

    name: str
    version: str
    content: str


async def resolve_instructions(
    session: AsyncSession,
    agent: Agent,
    *,
    tenant_id: str,
    pending: list[PendingPrompt],
) -> Agent:
    """The agent with its ``instructions_ref`` resolved into ``instructions``.

    Args:
        session: The caller's transaction.
        agent: An Agent document as applied.
        tenant_id: The applying tenant: only its prompts are found.
        pending: Prompt versions of the same apply (found before stored ones).

    Returns:
        ``agent`` itself when it has no reference, else a copy whose ``spec.instructions``
        is the prompt version's content.

    Raises:
        InvalidContract: both ``instructions`` and ``instructions_ref`` are given, or the
            reference names no prompt version of the tenant (the message says how to fix it).
    """
    ref = agent.spec.instructions_ref
    if ref is None:
        return agent
    if agent.spec.instructions is not None:
        raise _issue(
            agent,
            "spec.instructions and spec.instructions_ref are mutually exclusive; keep one",
        )
    name, _, version = ref.removeprefix("prompts/").partition("@")
    content = next((p.content for p in pending if (p.name, p.version) == (name, version)), None)
    if content is None:
        found = await _version_row(session, name, version, tenant_id=tenant_id)
        if found is None:
            known = await _versions_of(session, name, tenant_id=tenant_id)
            hint = f"its versions: {', '.join(known)}" if known else f"no prompt {name!r} exists"
            raise _issue(
                agent,
                f"instructions_ref {ref!r} names no prompt version ({hint}); apply a Prompt "
                f"document named {name!r} with metadata.version {version!r} first, or point "
                "instructions_ref at an existing version (`corral prompts list`)",
            )
        content = str(found.document["spec"]["content"])
    spec = agent.spec.model_copy(update={"instructions": content})
    return agent.model_copy(update={"spec": spec})


def _issue(agent: Agent, message: str) -> InvalidContract:
    where = f"Agent {agent.metadata.name}"
    return InvalidContract([ContractIssue(where, 0, "spec.instructions_ref", None, message)])


async def _version_row(
    session: AsyncSession, name: str, version: str, *, tenant_id: str
) -> PromptVersionRow | None:
    query = (
        select(PromptVersionRow)
        .join(PromptRow, PromptRow.id == PromptVersionRow.prompt_id)
        .where(PromptRow.tenant_id == tenant_id, PromptRow.name == name)
        .where(PromptVersionRow.version == version)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def _versions_of(session: AsyncSession, name: str, *, tenant_id: str) -> list[str]:
    query = (
        select(PromptVersionRow.version)
        .join(PromptRow, PromptRow.id == PromptVersionRow.prompt_id)
        .where(PromptRow.tenant_id == tenant_id, PromptRow.name == name)
        .order_by(PromptVersionRow.ordinal)
    )
    return list((await session.execute(query)).scalars())


async def list_prompts(
    session: AsyncSession, *, tenant_id: str, limit: int = 100, after: str | None = None
) -> list[tuple[PromptRow, PromptVersionRow]]:
    """Prompts with their latest version, ordered by name; ``after`` pages by name."""
    query = (
        select(PromptRow, PromptVersionRow)
        .join(
            PromptVersionRow,
            (PromptVersionRow.prompt_id == PromptRow.id)
            & (PromptVersionRow.version == PromptRow.latest_version),
        )
        .where(PromptRow.tenant_id == tenant_id)
    )
    if after:
        query = query.where(PromptRow.name > after)
    rows = await session.execute(query.order_by(PromptRow.name).limit(limit))
    return [(prompt, version) for prompt, version in rows]


async def list_prompt_versions(
    session: AsyncSession, name: str, *, tenant_id: str
) -> list[PromptVersionRow]:
    """Every version of the prompt, newest first (its history).

    Raises:
        NotFound: the tenant has no prompt ``name``.
    """
    query = (
        select(PromptVersionRow)
        .join(PromptRow, PromptRow.id == PromptVersionRow.prompt_id)
        .where(PromptRow.tenant_id == tenant_id, PromptRow.name == name)
        .order_by(PromptVersionRow.ordinal.desc())
    )
    rows = list((await session.execute(query)).scalars())
    if not rows:
        raise NotFound(
            f"Prompt {name!r} not found; list prompts with `corral prompts list`, or apply a "
            "Prompt document with `corral apply -f FILE`.",
            kind="prompt",
            name=name,
        )
    return rows


async def get_prompt_version(
    session: AsyncSession, name: str, version: str | None = None, *, tenant_id: str
) -> PromptVersionRow:
    """One version of a prompt (``None``: the latest).

    Raises:
        NotFound: no such prompt, or no such version (listing the versions).
    """
    rows = await list_prompt_versions(session, name, tenant_id=tenant_id)
    if version is None:
        return rows[0]
    for row in rows:
        if row.version == version:
            return row
    versions = [r.version for r in rows]
    raise NotFound(
        f"Prompt {name!r} has no version {version!r}; versions: {', '.join(versions)}.",
        kind="prompt_version",
        name=f"{name}@{version}",
        known=versions,
    )


async def prompt_diff(
    session: AsyncSession, name: str, old: str, new: str | None = None, *, tenant_id: str
) -> str:
    """Unified diff of the content of two versions of a prompt (``new`` ``None``: the latest).

    Raises:
        NotFound: no such prompt or version.
    """
    before = await get_prompt_version(session, name, old, tenant_id=tenant_id)
    after = await get_prompt_version(session, name, new, tenant_id=tenant_id)
    return "".join(
        difflib.unified_diff(
            _lines(before.document["spec"]["content"]),
            _lines(after.document["spec"]["content"]),
            f"{name}@{before.version}",
            f"{name}@{after.version}",
        )
    )


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def pending_of(prompt: Prompt, version: str) -> PendingPrompt:
    """The pending version a Prompt document gets in the apply in progress."""
    return PendingPrompt(prompt.metadata.name, version, prompt.spec.content)
