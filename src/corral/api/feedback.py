"""Routes: ``/v1/runs/{id}/feedback`` (people's ratings of a run's answer)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from corral.api._deps import Caller, ReadSessionDep, SessionDep, requires
from corral.api._schemas import FeedbackCreate, FeedbackOut
from corral.feedback import list_feedback, record_feedback

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/runs/{run_id}/feedback", response_model=FeedbackOut, status_code=201)
async def post_feedback(
    run_id: str,
    body: FeedbackCreate,
    session: SessionDep,
    caller: Annotated[Caller, requires("feedback.write")],
) -> FeedbackOut:
    """Rate a run's answer: score -1 (bad), 0 (neutral) or 1 (good), a label, a comment.

    The caller is recorded as the feedback's principal, with an audit event (``run.feedback``).
    A run of another tenant is not found (404).
    """
    row = await record_feedback(
        session,
        run_id,
        tenant_id=caller.tenant_id,
        principal=caller.principal,
        score=body.score,
        label=body.label,
        comment=body.comment,
    )
    return FeedbackOut.model_validate(row)


@router.get("/runs/{run_id}/feedback", response_model=list[FeedbackOut])
async def get_feedback(
    run_id: str, session: ReadSessionDep, caller: Annotated[Caller, requires("runs.read")]
) -> list[FeedbackOut]:
    """The feedback given on a run, oldest first."""
    rows = await list_feedback(session, run_id, tenant_id=caller.tenant_id)
    return [FeedbackOut.model_validate(row) for row in rows]
