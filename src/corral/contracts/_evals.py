"""The ``EvalSuite`` contract: cases an agent version is run on, and the graders that score them.

A case's workspace is either a directory on the server the runs only read (``workspace``), or a
sandbox Corral builds for each run from a fixture directory (``fixture``) and inline ``files``:
only a sandbox lets an eval run call tools with side effects (stage ``eval-sandbox``); every
other eval run is in stage ``eval``, where policy denies them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.contracts._models import Metadata

__all__ = [
    "ContainsGrader",
    "CostGrader",
    "EvalCase",
    "EvalSuite",
    "EvalSuiteSpec",
    "EvalThresholds",
    "ExactGrader",
    "ExpectedCall",
    "Grader",
    "JsonSchemaGrader",
    "JudgeGrader",
    "LatencyGrader",
    "NumericGrader",
    "PolicyGrader",
    "RegexGrader",
    "TrajectoryGrader",
]

_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Grader(_Strict):
    name: Annotated[str | None, Field(max_length=100)] = None
    """Label in results and score tables; default: the grader's type (and index)."""


class ExactGrader(_Grader):
    """The answer equals ``expected`` (else the case's ``expected``), whitespace-stripped."""

    type: Literal["exact"] = "exact"
    expected: str | None = None
    case_sensitive: bool = True


class ContainsGrader(_Grader):
    """The answer contains every one (``all``) or any one of ``values``."""

    type: Literal["contains"] = "contains"
    values: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    all: bool = True
    case_sensitive: bool = False


class RegexGrader(_Grader):
    """``pattern`` (Python ``re``) matches somewhere in the answer."""

    type: Literal["regex"] = "regex"
    pattern: Annotated[str, Field(min_length=1, max_length=2000)]
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class JsonSchemaGrader(_Grader):
    """The answer is JSON (a fenced ```json block is unwrapped) valid against ``json_schema``."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: Annotated[dict[str, Any], Field(alias="schema")]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NumericGrader(_Grader):
    """The first number in the answer is within ``tolerance`` of ``expected``.

    ``relative``: the tolerance is a fraction of ``expected`` (0.05: within 5%).
    """

    type: Literal["numeric"] = "numeric"
    expected: float
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    relative: bool = False


class ExpectedCall(_Strict):
    """A tool call the run should make: the tool, and arguments it must include (a subset)."""

    tool: Annotated[str, Field(min_length=1, max_length=63)]
    arguments: dict[str, Any] = {}


class TrajectoryGrader(_Grader):
    """The run's tool calls include ``calls``.

    ``order``: ``any`` (each expected call made, in any order), ``in_order`` (as a
    subsequence, other calls between allowed) or ``exact`` (exactly these calls, in order).
    """

    type: Literal["trajectory"] = "trajectory"
    calls: Annotated[list[ExpectedCall], Field(min_length=1, max_length=100)]
    order: Literal["any", "in_order", "exact"] = "any"


class PolicyGrader(_Grader):
    """No tool call was denied by policy or needed an approval (a policy violation)."""

    type: Literal["policy"] = "policy"


class CostGrader(_Grader):
    """The run (model calls, judge excluded) cost at most ``max_cost_usd``."""

    type: Literal["cost"] = "cost"
    max_cost_usd: Annotated[Decimal, Field(ge=0)]


class LatencyGrader(_Grader):
    """The run took at most ``max_seconds`` from start to end."""

    type: Literal["latency"] = "latency"
    max_seconds: Annotated[float, Field(gt=0)]


class JudgeGrader(_Grader):
    """A model grades the answer against ``rubric`` through the model gateway.

    The judge must answer the JSON object ``{"score": 0..1, "reason": "..."}``; anything
    else fails the grader. Its model call's cost is counted in the case's ``judge_cost_usd``.
    """

    type: Literal["judge"] = "judge"
    rubric: Annotated[str, Field(min_length=1, max_length=10_000)]
    model: Annotated[str, Field(min_length=1, max_length=200)] = "default"
    """A model alias or ``provider/model``."""
    pass_score: Annotated[float, Field(ge=0, le=1)] = 0.5


Grader = Annotated[
    ExactGrader
    | ContainsGrader
    | RegexGrader
    | JsonSchemaGrader
    | NumericGrader
    | TrajectoryGrader
    | PolicyGrader
    | CostGrader
    | LatencyGrader
    | JudgeGrader,
    Field(discriminator="type"),
]
"""One grader, by its ``type``."""


class EvalCase(_Strict):
    """One task the agent is given, where, and how its run is graded."""

    name: Annotated[str, Field(pattern=_NAME)]
    task: Annotated[str, Field(min_length=1, max_length=100_000)]
    expected: str | None = None
    """The expected answer (for ``exact`` graders that name none)."""
    workspace: Annotated[str | None, Field(min_length=1)] = None
    """A directory on the server the run reads (under a workspace root); ``None``: the
    suite's, else the one given when the eval starts."""
    fixture: Annotated[str | None, Field(min_length=1)] = None
    """A directory on the server (under a workspace root) copied into the case's sandbox."""
    files: dict[Annotated[str, Field(min_length=1, max_length=500)], str] = {}
    """Inline files written into the case's sandbox, by relative path."""
    graders: Annotated[list[Grader], Field(max_length=50)] = []
    """Graders for this case, after the suite's."""

    @property
    def sandboxed(self) -> bool:
        """Whether each run of the case gets a sandbox (a fixture or inline files)."""
        return self.fixture is not None or bool(self.files)

    @model_validator(mode="after")
    def _one_kind_of_workspace(self) -> EvalCase:
        if self.workspace is not None and self.sandboxed:
            raise ValueError("give either `workspace` or a sandbox (`fixture`, `files`), not both")
        for path in self.files:
            parts = path.replace("\\", "/").split("/")
            if path.startswith("/") or ".." in parts:
                raise ValueError(f"files: {path!r} must be a relative path inside the sandbox")
        return self


class EvalThresholds(_Strict):
    """What a passing eval needs (the promotion gate reads these)."""

    min_success_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Share of case runs whose graders all pass."""
    max_policy_violations: Annotated[int, Field(ge=0)] = 0
    max_median_cost_usd: Annotated[Decimal | None, Field(ge=0)] = None
    max_p95_latency_seconds: Annotated[float | None, Field(gt=0)] = None


class EvalSuiteSpec(_Strict):
    """Cases, graders applied to every case, and thresholds."""

    description: Annotated[str, Field(min_length=1, max_length=2000)] = "An eval suite."
    agent: Annotated[str | None, Field(pattern=_NAME)] = None
    """The agent the suite is written for (``corral eval run`` defaults to it)."""
    workspace: Annotated[str | None, Field(min_length=1)] = None
    """Default directory for cases without a workspace or sandbox."""
    graders: Annotated[list[Grader], Field(max_length=50)] = []
    cases: Annotated[list[EvalCase], Field(min_length=1, max_length=500)]
    thresholds: EvalThresholds = EvalThresholds()

    @model_validator(mode="after")
    def _graded_unique_cases(self) -> EvalSuiteSpec:
        names = [case.name for case in self.cases]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"case names must be unique; repeated: {', '.join(duplicates)}")
        ungraded = [c.name for c in self.cases if not (self.graders or c.graders)]
        if ungraded:
            raise ValueError(f"cases without any grader: {', '.join(ungraded)}")
        return self


class EvalSuite(_Strict):
    """An ``EvalSuite`` document."""

    api_version: Literal["corral.dev/v1"] = Field("corral.dev/v1", alias="apiVersion")
    kind: Literal["EvalSuite"] = "EvalSuite"
    metadata: Metadata
    spec: EvalSuiteSpec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
