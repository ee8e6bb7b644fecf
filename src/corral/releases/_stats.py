"""The statistics experiments and rollouts decide on: percentiles and a two-proportion z-test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["ZTest", "median", "percentile", "two_proportion_z_test"]


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; ``None`` when empty.

    Nearest rank: the value at position ceil(share x n) (1-based) of the sorted values, so the
    result is always one of the observations (NIST/Hyndman-Fan definition 1).
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[Decimal]) -> Decimal | None:
    """The median of ``values`` (mean of the middle two for an even count); ``None`` if empty."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class ZTest:
    """The outcome of :func:`two_proportion_z_test`.

    Attributes:
        z: The z statistic (positive when the second rate is the higher one).
        p_value: Two-sided p-value.
    """

    z: float
    p_value: float


def two_proportion_z_test(successes_a: int, n_a: int, successes_b: int, n_b: int) -> ZTest:
    """Two-sided two-proportion z-test with the pooled standard error.

    With p1 = x1/n1, p2 = x2/n2 and the pooled p = (x1 + x2) / (n1 + n2):

        z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2))
        p-value = 2 (1 - Phi(|z|)),  Phi(x) = (1 + erf(x / sqrt 2)) / 2

    (NIST/SEMATECH e-Handbook of Statistical Methods, section 7.3.3, "How can we determine
    whether two processes produce the same proportion of defectives?"). The normal
    approximation wants n p and n (1 - p) of at least about 5 in each group: the minimum
    sample size of an experiment is there for that.

    Args:
        successes_a: Events (successes or errors) in group A.
        n_a: Trials in group A (> 0).
        successes_b: Events in group B.
        n_b: Trials in group B (> 0).

    Returns:
        z and the two-sided p-value; z = 0 and p = 1 when both rates are 0 or both 1.

    Raises:
        ValueError: a group has no trials, or more events than trials.
    """
    if n_a <= 0 or n_b <= 0 or not (0 <= successes_a <= n_a and 0 <= successes_b <= n_b):
        raise ValueError("each group needs trials, and events between 0 and its trials")
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance == 0:
        return ZTest(0.0, 1.0)
    z = (p_b - p_a) / math.sqrt(variance)
    phi = (1 + math.erf(abs(z) / math.sqrt(2))) / 2
    return ZTest(z, max(0.0, min(1.0, 2 * (1 - phi))))
