"""Feedback: people rate runs' answers (score -1, 0 or 1, a label, a comment).

Each rating names its principal and appends an audit event; :func:`feedback_metrics` gives the
count and mean score per agent version, for experiments and releases to read.
"""

from corral.feedback._service import (
    MAX_COMMENT_CHARS,
    SCORES,
    FeedbackMetrics,
    feedback_metrics,
    list_feedback,
    record_feedback,
)
from corral.feedback._success import FeedbackSuccess
from corral.feedback._tables import FeedbackRow

__all__ = [
    "MAX_COMMENT_CHARS",
    "SCORES",
    "FeedbackMetrics",
    "FeedbackRow",
    "FeedbackSuccess",
    "feedback_metrics",
    "list_feedback",
    "record_feedback",
]
