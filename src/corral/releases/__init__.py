"""Releases beyond a promotion: A/B experiments and canary rollouts with automatic rollback.

Both split a stage's new runs between agent versions through a registry traffic split (a
deterministic SHA-256 hash of a key), read per-variant metrics from the runs, and record each
decision in ``release_decisions`` with an audit event. The worker heartbeat calls
:func:`evaluate_releases` to apply the experiments' stop rule and move rollouts along.
"""

from corral.releases._experiments import (
    Comparison,
    ExperimentPlan,
    ExperimentStatus,
    Verdict,
    evaluate_experiment,
    evaluate_experiments,
    experiment_status,
    list_experiments,
    start_experiment,
    stop_experiment,
)
from corral.releases._heartbeat import evaluate_releases
from corral.releases._metrics import (
    ERROR_STATUSES,
    FinishedRun,
    SuccessSource,
    TerminalSuccess,
    VariantMetrics,
    shadow_agreement,
    variant_metrics,
)
from corral.releases._rollouts import (
    RolloutPlan,
    RolloutStatus,
    abort_rollout,
    breaches,
    evaluate_rollouts,
    rollout_status,
    start_rollout,
)
from corral.releases._stats import ZTest, median, percentile, two_proportion_z_test
from corral.releases._tables import ExperimentRow, ReleaseDecisionRow, RolloutRow

__all__ = [
    "ERROR_STATUSES",
    "Comparison",
    "ExperimentPlan",
    "ExperimentRow",
    "ExperimentStatus",
    "FinishedRun",
    "ReleaseDecisionRow",
    "RolloutPlan",
    "RolloutRow",
    "RolloutStatus",
    "SuccessSource",
    "TerminalSuccess",
    "VariantMetrics",
    "Verdict",
    "ZTest",
    "abort_rollout",
    "breaches",
    "evaluate_experiment",
    "evaluate_experiments",
    "evaluate_releases",
    "evaluate_rollouts",
    "experiment_status",
    "list_experiments",
    "median",
    "percentile",
    "rollout_status",
    "shadow_agreement",
    "start_experiment",
    "start_rollout",
    "stop_experiment",
    "two_proportion_z_test",
    "variant_metrics",
]
