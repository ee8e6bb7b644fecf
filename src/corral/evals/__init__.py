"""Evals: eval suites run on agent versions through the real runtime, graded and compared.

The promotion gate reads :func:`latest_eval`: the latest completed eval of an exact agent
version digest on a suite.
"""

from corral.evals._gate import CaseDelta, Comparison, EvalResult, compare_versions, latest_eval
from corral.evals._graders import (
    JUDGE_SCHEMA,
    NOT_STARTED,
    Judge,
    JudgeReply,
    Observation,
    ObservedCall,
    Verdict,
    grade,
    grader_names,
)
from corral.evals._inspect import INSPECT_LOG_VERSION, inspect_log
from corral.evals._judge import gateway_judge
from corral.evals._metrics import (
    BOOTSTRAP_SAMPLES,
    Interval,
    Summary,
    bootstrap_delta,
    p95,
    summarize,
)
from corral.evals._service import (
    EVAL_SANDBOX_STAGE,
    EVAL_STAGE,
    MAX_REPEAT,
    EvalReport,
    get_eval,
    grade_eval,
    list_evals,
    sandbox_root,
    start_eval,
)
from corral.evals._suites import apply_suites, get_suite_version, suite_digest
from corral.evals._tables import (
    EvalCaseResultRow,
    EvalGraderResultRow,
    EvalRunRow,
    EvalSuiteRow,
    EvalSuiteVersionRow,
)

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "EVAL_SANDBOX_STAGE",
    "EVAL_STAGE",
    "INSPECT_LOG_VERSION",
    "JUDGE_SCHEMA",
    "MAX_REPEAT",
    "NOT_STARTED",
    "CaseDelta",
    "Comparison",
    "EvalCaseResultRow",
    "EvalGraderResultRow",
    "EvalReport",
    "EvalResult",
    "EvalRunRow",
    "EvalSuiteRow",
    "EvalSuiteVersionRow",
    "Interval",
    "Judge",
    "JudgeReply",
    "Observation",
    "ObservedCall",
    "Summary",
    "Verdict",
    "apply_suites",
    "bootstrap_delta",
    "compare_versions",
    "gateway_judge",
    "get_eval",
    "get_suite_version",
    "grade",
    "grade_eval",
    "grader_names",
    "inspect_log",
    "latest_eval",
    "list_evals",
    "p95",
    "sandbox_root",
    "start_eval",
    "suite_digest",
    "summarize",
]
