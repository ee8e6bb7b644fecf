"""What the worker heartbeat does for releases: experiments' stop rule, rollouts' steps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from corral.policy import Governance
from corral.registry import EvalLookup
from corral.releases._experiments import evaluate_experiments
from corral.releases._metrics import SuccessSource
from corral.releases._rollouts import evaluate_rollouts
from corral.store import SYSTEM, Store

__all__ = ["evaluate_releases"]


async def evaluate_releases(
    store: Store,
    governance: Governance,
    now: datetime,
    *,
    stages: Sequence[str] | None = None,
    source: SuccessSource | None = None,
    evals: EvalLookup | None = None,
) -> None:
    """Apply the experiments' stop rule and move rollouts along (one worker heartbeat).

    ``evals`` reads eval results for the promotion gate a rollout reaching 100% passes
    (``corral.evals.latest_eval``).
    """
    async with store.transaction(SYSTEM) as session:
        await evaluate_experiments(session, now=now, source=source)
    await evaluate_rollouts(store, governance, now=now, stages=stages, source=source, evals=evals)
