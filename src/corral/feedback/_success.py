"""User feedback as the success measure of experiments and rollouts.

A run succeeded when it ended ``SUCCEEDED`` and the mean score its users gave it is not
negative (scores are -1, 0 or 1; a run nobody rated counts by its status alone). So a canary
whose answers users mark bad loses on success rate even when every run "succeeds".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from sqlalchemy import Connection, Table, func, select

from corral.feedback._tables import FeedbackRow
from corral.releases import FinishedRun
from corral.runtime import RunStatus

__all__ = ["FeedbackSuccess"]

_FEEDBACK = cast(Table, FeedbackRow.__table__)
_BATCH: Final = 500
"""Run ids per query (SQLite's bound-parameter limit is far above; this keeps plans small)."""


class FeedbackSuccess:
    """A :class:`corral.releases.SuccessSource`: ``SUCCEEDED`` and not disliked by its users."""

    def successes(self, connection: Connection, runs: Sequence[FinishedRun]) -> set[str]:
        """The runs in ``runs`` that ended ``SUCCEEDED`` and whose mean feedback is >= 0."""
        succeeded = [run.run_id for run in runs if run.status == RunStatus.SUCCEEDED]
        disliked: set[str] = set()
        for start in range(0, len(succeeded), _BATCH):
            batch = succeeded[start : start + _BATCH]
            rows = connection.execute(
                select(_FEEDBACK.c.run_id)
                .where(_FEEDBACK.c.run_id.in_(batch))
                .group_by(_FEEDBACK.c.run_id)
                .having(func.avg(_FEEDBACK.c.score) < 0)
            )
            disliked.update(row.run_id for row in rows)
        return set(succeeded) - disliked
