"""Each grader on a case run it passes and on one it fails."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter

from corral.contracts import EvalCase, EvalThresholds, Grader
from corral.evals import (
    JudgeReply,
    Observation,
    ObservedCall,
    grade,
    grader_names,
    summarize,
)

CASE = EvalCase(name="c", task="What is the answer?", expected="42")
CALLS = (
    ObservedCall("fs.list_dir", {"path": "."}, "COMPLETED"),
    ObservedCall("fs.read_file", {"path": "pkg/core.py", "limit": 10}, "COMPLETED"),
)


def seen(output: str | None = "The answer is 42.", **fields: Any) -> Observation:
    base: dict[str, Any] = {
        "task": CASE.task,
        "output": output,
        "run_status": "SUCCEEDED",
        "tool_calls": CALLS,
        "cost_usd": Decimal("0.002"),
        "latency_seconds": 3.0,
    }
    base.update(fields)
    return Observation(**base)


def grader(data: dict[str, Any]) -> Any:
    return TypeAdapter(Grader).validate_python(data)


CASES = [
    ({"type": "exact"}, seen("42"), seen("41")),
    ({"type": "exact", "expected": "ok", "case_sensitive": False}, seen(" OK "), seen("okay")),
    ({"type": "contains", "values": ["answer", "42"]}, seen(), seen("The answer is 41.")),
    ({"type": "contains", "values": ["x", "42"], "all": False}, seen(), seen("none")),
    ({"type": "regex", "pattern": r"\b42\b"}, seen(), seen("4242")),
    (
        {"type": "json_schema", "schema": {"type": "object", "required": ["n"]}},
        seen('```json\n{"n": 1}\n```'),
        seen('{"m": 1}'),
    ),
    ({"type": "numeric", "expected": 42.5, "tolerance": 0.5}, seen("about 42"), seen("40")),
    (
        {"type": "numeric", "expected": 100, "tolerance": 0.1, "relative": True},
        seen("1,05"),
        seen("89"),
    ),
    (
        {
            "type": "trajectory",
            "calls": [{"tool": "fs.read_file", "arguments": {"path": "pkg/core.py"}}],
        },
        seen(),
        seen(tool_calls=CALLS[:1]),
    ),
    (
        {
            "type": "trajectory",
            "order": "in_order",
            "calls": [{"tool": "fs.list_dir"}, {"tool": "fs.read_file"}],
        },
        seen(),
        seen(tool_calls=CALLS[::-1]),
    ),
    (
        {
            "type": "trajectory",
            "order": "exact",
            "calls": [{"tool": "fs.list_dir", "arguments": {"path": "."}}],
        },
        seen(tool_calls=CALLS[:1]),
        seen(),
    ),
    ({"type": "policy"}, seen(), seen(policy_violations=1)),
    ({"type": "cost", "max_cost_usd": "0.005"}, seen(), seen(cost_usd=Decimal("0.0051"))),
    ({"type": "latency", "max_seconds": 5}, seen(), seen(latency_seconds=5.5)),
]


@pytest.mark.parametrize(("spec", "passing", "failing"), CASES, ids=[c[0]["type"] for c in CASES])
async def test_a_grader_passes_and_fails(spec: dict[str, Any], passing, failing) -> None:
    g = grader(spec)
    good = await grade(g, CASE, passing, name="g")
    bad = await grade(g, CASE, failing, name="g")
    assert (good.passed, good.score) == (True, 1.0), good.detail
    assert (bad.passed, bad.score) == (False, 0.0), bad.detail


async def test_answer_graders_fail_a_run_without_an_answer() -> None:
    verdict = await grade(grader({"type": "contains", "values": ["a"]}), CASE, seen(None), name="g")
    assert not verdict.passed and "no answer" in verdict.detail


class FakeJudge:
    """A judge model at the edge: it answers what it is told to, and costs what it is told to."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.prompts: list[tuple[str, str]] = []

    async def __call__(self, model: str, prompt: str) -> JudgeReply:
        self.prompts.append((model, prompt))
        return JudgeReply(self.text, Decimal("0.0007"))


async def test_the_judge_passes_fails_and_counts_its_cost() -> None:
    g = grader({"type": "judge", "rubric": "Says 42.", "model": "fast", "pass_score": 0.7})
    judge = FakeJudge('{"score": 0.9, "reason": "says 42"}')
    good = await grade(g, CASE, seen(), name="judge", judge=judge)
    assert (good.passed, good.score, good.cost_usd) == (True, 0.9, Decimal("0.0007"))
    assert judge.prompts[0][0] == "fast" and "Says 42." in judge.prompts[0][1]
    low = await grade(
        g, CASE, seen(), name="judge", judge=FakeJudge('{"score": 0.2, "reason": "no"}')
    )
    assert (low.passed, low.score) == (False, 0.2)
    # Anything but the tight JSON object fails (and still costs what the call cost).
    loose = await grade(
        g, CASE, seen(), name="judge", judge=FakeJudge('{"score": 2, "reason": "x"}')
    )
    assert not loose.passed and loose.cost_usd == Decimal("0.0007")
    assert not (await grade(g, CASE, seen(), name="judge")).passed  # no judge: fails


def test_grader_names_default_to_the_type_and_stay_unique() -> None:
    graders = [
        grader({"type": "policy"}),
        grader({"type": "policy"}),
        grader({"type": "regex", "pattern": "a", "name": "r"}),
    ]
    assert grader_names(graders) == ["policy", "policy-2", "r"]


def test_a_summary_writes_money_as_fixed_decimal_text() -> None:
    zero = Decimal("0E-12")
    summary = summarize([(True, 0, zero, 1.0, Decimal("0.000120000000"))], EvalThresholds())
    assert (summary.to_json()["median_cost_usd"], summary.to_json()["judge_cost_usd"]) == (
        "0",
        "0.00012",
    )
