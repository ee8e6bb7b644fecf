"""Recording and reading people's feedback on runs, and its metrics per agent version."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import append_event
from corral.errors import InvalidRequest
from corral.feedback._tables import FeedbackRow
from corral.runtime import get_run
from corral.store import new_id, utcnow

__all__ = [
    "MAX_COMMENT_CHARS",
    "SCORES",
    "FeedbackMetrics",
    "feedback_metrics",
    "list_feedback",
    "record_feedback",
]

SCORES: Final = (-1, 0, 1)
"""The scores feedback may give: -1 (bad answer), 0 (neutral), 1 (good answer)."""

MAX_COMMENT_CHARS: Final = 4000
"""Longest comment kept, in characters."""


@dataclass(frozen=True)
class FeedbackMetrics:
    """Feedback on the runs of one agent version.

    Attributes:
        agent_version: The version (``1.0.2``).
        count: Feedback rows given.
        mean_score: Mean of their scores, in [-1, 1] (``None`` when ``count`` is 0).
    """

    agent_version: str
    count: int
    mean_score: Decimal | None


async def record_feedback(
    session: AsyncSession,
    run_id: str,
    *,
    tenant_id: str,
    principal: str,
    score: int,
    label: str | None = None,
    comment: str | None = None,
) -> FeedbackRow:
    """Record one principal's rating of a run, and its audit event, in the caller's transaction.

    Args:
        session: The caller's transaction.
        run_id: The rated run (any status: a wrong refusal is worth rating too).
        tenant_id: The caller's tenant; a run of another tenant is not found.
        principal: Who rates it.
        score: One of :data:`SCORES`.
        label: A short category (``wrong_tool``, ``hallucination``), at most 64 characters.
        comment: Free text, at most :data:`MAX_COMMENT_CHARS` characters.

    Raises:
        NotFound: no such run in the tenant.
        InvalidRequest: a score outside :data:`SCORES`, or a label or comment too long.
    """
    if score not in SCORES:
        raise InvalidRequest(f"score must be -1 (bad), 0 (neutral) or 1 (good), got {score}.")
    if label is not None and not 1 <= len(label) <= 64:
        raise InvalidRequest("label must be 1 to 64 characters; put longer text in the comment.")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InvalidRequest(f"comment is longer than {MAX_COMMENT_CHARS} characters; shorten it.")
    run = await get_run(session, run_id, tenant_id=tenant_id)
    row = FeedbackRow(
        id=new_id("fb"),
        tenant_id=tenant_id,
        run_id=run.id,
        agent_name=run.agent_name,
        agent_version=run.agent_version,
        score=score,
        label=label,
        comment=comment,
        principal=principal,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    await append_event(
        session,
        tenant_id=tenant_id,
        actor=principal,
        action="run.feedback",
        subject=f"run:{run.id}",
        outcome="recorded",
        run_id=run.id,
        details={"feedback_id": row.id, "score": score, "label": label},
    )
    return row


async def list_feedback(session: AsyncSession, run_id: str, *, tenant_id: str) -> list[FeedbackRow]:
    """The feedback on a run, oldest first.

    Raises:
        NotFound: no such run in the tenant.
    """
    await get_run(session, run_id, tenant_id=tenant_id)
    query = (
        select(FeedbackRow)
        .where(FeedbackRow.tenant_id == tenant_id, FeedbackRow.run_id == run_id)
        .order_by(FeedbackRow.created_at, FeedbackRow.id)
    )
    return list((await session.execute(query)).scalars())


async def feedback_metrics(
    session: AsyncSession, agent_name: str, *, tenant_id: str
) -> dict[str, FeedbackMetrics]:
    """Feedback count and mean score per version of an agent (for experiment metrics).

    Args:
        session: A session of the caller.
        agent_name: The agent.
        tenant_id: Its tenant.

    Returns:
        By agent version, those with at least one feedback row.
    """
    query = (
        select(FeedbackRow.agent_version, func.count(), func.sum(FeedbackRow.score))
        .where(FeedbackRow.tenant_id == tenant_id, FeedbackRow.agent_name == agent_name)
        .group_by(FeedbackRow.agent_version)
    )
    return {
        version: FeedbackMetrics(version, count, Decimal(int(total)) / Decimal(count))
        for version, count, total in (await session.execute(query)).all()
    }
