"""Graders: each turns what a case run did (an :class:`Observation`) into a :class:`Verdict`.

Every grader but the judge is a pure function of the observation; the judge asks a model
through a :class:`Judge` (the model gateway, in the service) and counts the call's cost.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from corral.contracts import (
    ContainsGrader,
    CostGrader,
    EvalCase,
    ExactGrader,
    ExpectedCall,
    JsonSchemaGrader,
    JudgeGrader,
    LatencyGrader,
    NumericGrader,
    PolicyGrader,
    RegexGrader,
    TrajectoryGrader,
)
from corral.errors import BudgetExceeded, PolicyDenied

if TYPE_CHECKING:
    import jsonschema_rs

__all__ = [
    "JUDGE_SCHEMA",
    "NOT_STARTED",
    "Judge",
    "JudgeReply",
    "Observation",
    "ObservedCall",
    "Verdict",
    "grade",
    "grader_names",
]

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*?)\n```\s*$", re.DOTALL)

NOT_STARTED = "NOT_STARTED"
"""The ``run_status`` of a case whose run could not start: every grader fails it."""

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "maxLength": 2000},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
"""What a judge model must answer: ``{"score": 0..1, "reason": "..."}`` and nothing else."""


def _validator_for(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    # jsonschema_rs (about 6 MB RSS) is imported by the first grade that needs it, not by every
    # process that imports the evals domain (an idle worker or server).
    import jsonschema_rs

    return jsonschema_rs.validator_for(schema)


@functools.cache
def _judge_validator() -> jsonschema_rs.Validator:
    return _validator_for(JUDGE_SCHEMA)


@dataclass(frozen=True)
class ObservedCall:
    """A tool call the run attempted: tool, arguments, status (``COMPLETED``, ``DENIED``...)."""

    tool: str
    arguments: Mapping[str, Any]
    status: str


@dataclass(frozen=True)
class Observation:
    """What one case run did, as the graders see it.

    Attributes:
        task: The task the agent was given.
        output: The final answer, or ``None`` when the run ended without one.
        run_status: The run's status (``SUCCEEDED``, ``FAILED``, ``AWAITING_APPROVAL``...).
        tool_calls: Every tool call attempted, in order.
        cost_usd: The run's model calls, US dollars.
        latency_seconds: Start to end of the run, seconds; ``None`` if it never started.
        policy_violations: Tool calls denied by policy or waiting for an approval.
    """

    task: str
    output: str | None
    run_status: str
    tool_calls: tuple[ObservedCall, ...] = ()
    cost_usd: Decimal = Decimal(0)
    latency_seconds: float | None = None
    policy_violations: int = 0


@dataclass(frozen=True)
class Verdict:
    """One grader's result: pass or fail, a score in 0..1, why, and what grading cost (USD)."""

    name: str
    type: str
    passed: bool
    score: float
    detail: str
    cost_usd: Decimal = field(default=Decimal(0))


@dataclass(frozen=True)
class JudgeReply:
    """A judge model's raw answer and the cost of its call (US dollars)."""

    text: str
    cost_usd: Decimal


Judge = Callable[[str, str], Awaitable[JudgeReply]]
"""``await judge(model, prompt)``: asks ``model`` (an alias or ``provider/model``)."""

Grader = (
    ExactGrader
    | ContainsGrader
    | RegexGrader
    | JsonSchemaGrader
    | NumericGrader
    | TrajectoryGrader
    | PolicyGrader
    | CostGrader
    | LatencyGrader
    | JudgeGrader
)


def grader_names(graders: Sequence[Grader]) -> list[str]:
    """Each grader's ``name``, else its ``type`` (``{type}-{n}`` from a type's second use on)."""
    names: list[str] = []
    for grader in graders:
        name = grader.name or grader.type
        n = 2
        while name in names:
            name = f"{grader.name or grader.type}-{n}"
            n += 1
        names.append(name)
    return names


async def grade(
    grader: Grader, case: EvalCase, seen: Observation, *, name: str, judge: Judge | None = None
) -> Verdict:
    """Grade one observation.

    Args:
        grader: The grader.
        case: The case (its ``expected`` answer for ``exact`` graders naming none).
        seen: What the run did.
        name: The grader's label in the results.
        judge: Asks a model; required by ``judge`` graders (without it they fail).

    Returns:
        The verdict. A run without an answer fails every answer grader; a run that did
        not start fails every grader.
    """
    if seen.run_status == NOT_STARTED:
        return Verdict(name, grader.type, False, 0.0, "the run did not start")
    if isinstance(grader, JudgeGrader):
        return await _judge(grader, seen, name, judge)
    if isinstance(grader, PolicyGrader | CostGrader | LatencyGrader | TrajectoryGrader):
        passed, detail = _run_check(grader, seen)
    elif seen.output is None:
        passed, detail = False, f"no answer (run {seen.run_status})"
    else:
        passed, detail = _answer_check(grader, case, seen.output)
    return Verdict(name, grader.type, passed, 1.0 if passed else 0.0, detail)


def _answer_check(grader: Grader, case: EvalCase, output: str) -> tuple[bool, str]:
    if isinstance(grader, ExactGrader):
        expected = grader.expected if grader.expected is not None else case.expected
        if expected is None:
            return False, "no expected answer: set `expected` on the grader or the case"
        got, want = output.strip(), expected.strip()
        if not grader.case_sensitive:
            got, want = got.casefold(), want.casefold()
        return got == want, "equal" if got == want else f"expected {want!r}, got {got[:200]!r}"
    if isinstance(grader, ContainsGrader):
        fold = (lambda s: s) if grader.case_sensitive else str.casefold
        missing = [v for v in grader.values if fold(v) not in fold(output)]
        found = len(grader.values) - len(missing)
        passed = not missing if grader.all else found > 0
        return passed, f"{found}/{len(grader.values)} found" + (
            f"; missing {missing!r}" if missing else ""
        )
    if isinstance(grader, RegexGrader):
        flags = re.IGNORECASE if grader.ignore_case else 0
        match = re.search(grader.pattern, output, flags)
        return match is not None, f"matched {match.group(0)[:100]!r}" if match else "no match"
    if isinstance(grader, JsonSchemaGrader):
        return _json_check(grader.json_schema, output)
    assert isinstance(grader, NumericGrader)
    return _numeric_check(grader, output)


def _json_check(schema: dict[str, Any], output: str) -> tuple[bool, str]:
    fenced = _FENCE.match(output.strip())
    try:
        value = json.loads(fenced.group(1) if fenced else output)
    except ValueError as exc:
        return False, f"not JSON: {exc}"
    errors = [e.message for e in _validator_for(schema).iter_errors(value)]
    return not errors, "valid" if not errors else "; ".join(errors[:3])


def _numeric_check(grader: NumericGrader, output: str) -> tuple[bool, str]:
    match = _NUMBER.search(output.replace(",", ""))
    if match is None:
        return False, "no number in the answer"
    got = float(match.group(0))
    allowed = grader.tolerance * (abs(grader.expected) if grader.relative else 1.0)
    passed = abs(got - grader.expected) <= allowed
    return passed, f"got {got:g}, expected {grader.expected:g} ± {allowed:g}"


def _run_check(
    grader: PolicyGrader | CostGrader | LatencyGrader | TrajectoryGrader, seen: Observation
) -> tuple[bool, str]:
    if isinstance(grader, PolicyGrader):
        n = seen.policy_violations
        return n == 0, "no policy violation" if n == 0 else f"{n} policy violation(s)"
    if isinstance(grader, CostGrader):
        ok = seen.cost_usd <= grader.max_cost_usd
        return ok, f"cost ${seen.cost_usd} (max ${grader.max_cost_usd})"
    if isinstance(grader, LatencyGrader):
        took = seen.latency_seconds
        if took is None:
            return False, "the run never started"
        return took <= grader.max_seconds, f"took {took:.2f}s (max {grader.max_seconds:g}s)"
    return _trajectory_check(grader, seen.tool_calls)


def _matches(expected: ExpectedCall, call: ObservedCall) -> bool:
    return expected.tool == call.tool and all(
        key in call.arguments and call.arguments[key] == value
        for key, value in expected.arguments.items()
    )


def _trajectory_check(grader: TrajectoryGrader, calls: Sequence[ObservedCall]) -> tuple[bool, str]:
    made = [c.tool for c in calls]
    if grader.order == "exact":
        passed = len(calls) == len(grader.calls) and all(
            _matches(e, c) for e, c in zip(grader.calls, calls, strict=False)
        )
        return passed, f"calls {made}"
    if grader.order == "in_order":
        remaining = iter(calls)
        found = sum(1 for e in grader.calls if any(_matches(e, c) for c in remaining))
    else:
        found = sum(1 for e in grader.calls if any(_matches(e, c) for c in calls))
    passed = found == len(grader.calls)
    return passed, f"{found}/{len(grader.calls)} expected calls ({grader.order}); calls {made}"


def _judge_prompt(grader: JudgeGrader, seen: Observation) -> str:
    return (
        "You grade an AI agent's answer against a rubric. Reply with only a JSON object "
        '{"score": <number from 0 to 1>, "reason": "<one sentence>"}.\n\n'
        f"Rubric:\n{grader.rubric}\n\nTask:\n{seen.task}\n\nAnswer:\n{seen.output}\n"
    )


async def _judge(grader: JudgeGrader, seen: Observation, name: str, judge: Judge | None) -> Verdict:
    if judge is None:
        return Verdict(name, grader.type, False, 0.0, "no judge model available")
    if seen.output is None:
        return Verdict(name, grader.type, False, 0.0, f"no answer (run {seen.run_status})")
    try:
        reply = await judge(grader.model, _judge_prompt(grader, seen))
    except (PolicyDenied, BudgetExceeded) as exc:  # decided, recorded, and a failed grade
        return Verdict(name, grader.type, False, 0.0, f"the judge's call was refused: {exc}")
    fenced = _FENCE.match(reply.text.strip())
    try:
        value = json.loads(fenced.group(1) if fenced else reply.text)
    except ValueError:
        value = None
    if value is None or not _judge_validator().is_valid(value):
        detail = f"the judge's answer is not the required JSON: {reply.text[:200]!r}"
        return Verdict(name, grader.type, False, 0.0, detail, reply.cost_usd)
    score = float(value["score"])
    passed = score >= grader.pass_score
    return Verdict(name, grader.type, passed, score, str(value["reason"]), reply.cost_usd)
