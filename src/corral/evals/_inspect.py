"""Export an eval in Inspect's eval log format (``.json``), so ``inspect view`` can open it.

The fields follow Inspect's ``EvalLog`` (log format version 2,
https://inspect.aisi.org.uk/eval-logs.html): one sample per case run (``epoch`` is the repeat,
from 1), one score per grader (``C``/``I`` for pass/fail, the judge's number for a judge), and
per grader an ``accuracy`` metric over the samples.
"""

from __future__ import annotations

from typing import Any

from corral.contracts import EvalSuite
from corral.evals._service import EvalReport

__all__ = ["INSPECT_LOG_VERSION", "inspect_log"]

INSPECT_LOG_VERSION = 2
"""The version of Inspect's log format written."""


def _iso(value: Any) -> str:
    return "" if value is None else value.isoformat()


def _samples(report: EvalReport, suite: EvalSuite) -> list[dict[str, Any]]:
    cases = {c.name: c for c in suite.spec.cases}
    model = f"corral/{report.run.agent_name}@{report.run.agent_version}"
    samples = []
    for result in report.cases:
        case = cases.get(result.case_name)
        task = case.task if case is not None else result.case_name
        output = result.output or ""
        scores = {
            g.grader_name: {
                "value": g.score if g.grader_type == "judge" else ("C" if g.passed else "I"),
                "explanation": g.detail,
            }
            for g in report.graders.get(result.id, [])
        }
        samples.append(
            {
                "id": result.case_name,
                "epoch": result.repeat_index + 1,
                "input": task,
                "target": (case.expected if case is not None else None) or "",
                "messages": [
                    {"role": "user", "content": task},
                    {"role": "assistant", "content": output},
                ],
                "output": {
                    "model": model,
                    "choices": [
                        {"message": {"role": "assistant", "content": output}, "stop_reason": "stop"}
                    ],
                },
                "scores": scores,
                "metadata": {
                    "run_id": result.run_id,
                    "run_status": result.run_status,
                    "passed": result.passed,
                    "cost_usd": str(result.cost_usd),
                    "latency_seconds": result.latency_seconds,
                    "policy_violations": result.policy_violations,
                },
            }
        )
    return samples


def _scores(report: EvalReport) -> list[dict[str, Any]]:
    by_grader: dict[str, list[float]] = {}
    for rows in report.graders.values():
        for g in rows:
            by_grader.setdefault(g.grader_name, []).append(1.0 if g.passed else 0.0)
    return [
        {
            "name": name,
            "scorer": name,
            "params": {},
            "metrics": {"accuracy": {"name": "accuracy", "value": sum(v) / len(v), "params": {}}},
        }
        for name, v in by_grader.items()
    ]


def inspect_log(report: EvalReport, suite: EvalSuite) -> dict[str, Any]:
    """The eval as an Inspect ``EvalLog`` document (JSON-safe).

    Args:
        report: The eval (its status maps to ``success`` when completed, else ``started``).
        suite: The suite version that ran (for each case's task and expected answer).
    """
    run = report.run
    samples = _samples(report, suite)
    return {
        "version": INSPECT_LOG_VERSION,
        "status": "success" if run.status == "completed" else "started",
        "eval": {
            "eval_id": run.id,
            "run_id": run.id,
            "created": _iso(run.created_at),
            "task": f"corral/{run.suite_name}",
            "task_id": run.suite_digest,
            "task_version": 0,
            "dataset": {
                "name": run.suite_name,
                "samples": len({s["id"] for s in samples}),
                "sample_ids": sorted({s["id"] for s in samples}),
                "shuffled": False,
            },
            "model": f"corral/{run.agent_name}@{run.agent_version}",
            "config": {"epochs": run.repeat},
            "packages": {},
            "metadata": {
                "suite_version": run.suite_version,
                "agent_digest": run.agent_digest,
                "passed": run.passed,
                "summary": run.summary,
            },
        },
        "plan": {"name": "corral", "steps": [{"solver": "corral.runtime", "params": {}}]},
        "results": {
            "total_samples": len(samples),
            "completed_samples": sum(1 for c in report.cases if c.status == "graded"),
            "scores": _scores(report),
        },
        "stats": {
            "started_at": _iso(run.created_at),
            "completed_at": _iso(run.finished_at),
            "model_usage": {},
        },
        "samples": samples,
    }
