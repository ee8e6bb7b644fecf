"""Regression cases from runs, appended to an ``EvalSuite`` file (``corral eval add-case``).

PyYAML (Corral's one YAML library) cannot write a document back with its comments, so the
case is *text* inserted after the last item of the block list ``spec.cases``: everything else
in the file stays byte for byte. The result is parsed again by the contract loader and must
hold the suite as before plus exactly the new case, else nothing is written.
"""

from __future__ import annotations

import os
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corral.contracts import EvalCase, EvalSuite, load_yaml, parse_document
from corral.errors import InvalidContract

__all__ = [
    "Expect",
    "SuiteFileError",
    "append_case",
    "case_from_run",
    "read_suite",
    "render_case",
]


class Expect(StrEnum):
    """How a case made from a run grades answers."""

    final = "final"
    """An ``exact`` grader on the run's final answer (the case's ``expected``)."""
    contains = "contains"
    """A ``contains`` grader: the answer contains the run's whole final answer."""
    none = "none"
    """Only the suite's graders (a ``policy`` grader when the suite has none)."""


class SuiteFileError(Exception):
    """The file is no suite this command can extend, or the case does not fit; nothing written."""


def read_suite(path: Path) -> tuple[str, EvalSuite]:
    """The file's text and its one ``EvalSuite`` document.

    Raises:
        SuiteFileError: the file cannot be read, is not valid YAML, or is not exactly one
            valid ``EvalSuite`` document.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteFileError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    return text, _parse(text, path)


def _parse(text: str, path: Path) -> EvalSuite:
    try:
        documents = [d for d in load_yaml(text, source=str(path)) if d.data is not None]
        if len(documents) != 1 or not isinstance(documents[0].data, dict):
            raise SuiteFileError(
                f"{str(path)!r} is not an eval suite file: it must hold exactly one "
                "`kind: EvalSuite` document."
            )
        if documents[0].data.get("kind") != "EvalSuite":
            raise SuiteFileError(
                f"{str(path)!r} is not an eval suite file: its kind is "
                f"{documents[0].data.get('kind')!r}, not 'EvalSuite'."
            )
        suite = parse_document(documents[0].data, lines=documents[0].lines)
    except InvalidContract as exc:
        raise SuiteFileError(f"{str(path)!r} is not a valid eval suite: {exc.message}") from None
    assert isinstance(suite, EvalSuite)
    return suite


def _default_name(run_id: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    return name[:63].rstrip("-") or "run"


def case_from_run(
    run: dict[str, Any], suite: EvalSuite, *, name: str | None = None, expect: Expect = Expect.final
) -> EvalCase:
    """An eval case replaying ``run`` (a ``GET /v1/runs/{id}`` body): its task and workspace.

    Args:
        run: The run as the API returns it (``id``, ``task``, ``workspace``, ``output``...).
        suite: The suite the case joins (its graders decide whether ``none`` needs one).
        name: The case name; default: from the run id (``run_3f2a...`` -> ``run-3f2a...``).
        expect: How the case grades answers (see :data:`Expect`).

    Raises:
        SuiteFileError: the name is taken or invalid, or ``expect`` needs an answer the run
            does not have.
    """
    name = name or _default_name(run["id"])
    if any(case.name == name for case in suite.spec.cases):
        raise SuiteFileError(
            f"suite {suite.metadata.name!r} already has a case named {name!r}; "
            "pick another with --name."
        )
    answer = (run.get("output") or "").strip()
    if expect is not Expect.none and not answer:
        raise SuiteFileError(f"run {run['id']} has no final answer to expect; use --expect none.")
    case: dict[str, Any] = {"name": name, "task": run["task"]}
    if run.get("workspace"):
        case["workspace"] = run["workspace"]
    if expect is Expect.final:
        case["expected"] = answer
        case["graders"] = [{"type": "exact"}]
    elif expect is Expect.contains:
        case["graders"] = [{"type": "contains", "values": [answer]}]
    elif not suite.spec.graders:
        case["graders"] = [{"type": "policy"}]
    try:
        return EvalCase.model_validate(case)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SuiteFileError(
            f"cannot make a case from run {run['id']}: {problems} "
            "(case names are lowercase letters, digits and '-', at most 63)."
        ) from None


def render_case(case: EvalCase, *, indent: int = 0, comment: str = "") -> str:
    """The case as a YAML block-list item at ``indent`` spaces, after ``# comment`` lines."""
    body = yaml.safe_dump(
        case.model_dump(mode="json", by_alias=True, exclude_unset=True),
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    pad = " " * indent
    lines = [f"{pad}# {line}".rstrip() for line in comment.splitlines()]
    for number, line in enumerate(body.splitlines()):
        lines.append(f"{pad}- {line}" if number == 0 else f"{pad}  {line}".rstrip())
    return "\n".join(lines) + "\n"


def _cases_node(text: str) -> yaml.SequenceNode:
    # Composed only after load_yaml accepted the text (its alias and depth limits hold).
    # libyaml's parser when PyYAML has it, as load_yaml does: both read the text alike.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = next(
            n for n in yaml.compose_all(text, Loader=loader) if isinstance(n, yaml.MappingNode)
        )
    except yaml.YAMLError as exc:
        raise SuiteFileError(f"cannot find where spec.cases ends: {exc}") from None
    spec = next(v for k, v in root.value if k.value == "spec")
    cases = next(v for k, v in spec.value if k.value == "cases")
    if not isinstance(cases, yaml.SequenceNode) or cases.flow_style:
        raise SuiteFileError(
            "spec.cases is not a block list (`- name: ...` items); rewrite it as one to add cases."
        )
    return cases


def _last_line(node: yaml.Node) -> int:
    """Zero-based line of the last character of ``node`` (block collections end early)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(last, tuple) else last
    end = node.end_mark
    return int(end.line) - 1 if end.column == 0 else int(end.line)


def append_case(path: Path, case: EvalCase, *, comment: str = "") -> str:
    """Insert ``case`` after the last item of the file's ``spec.cases`` and write the file.

    Everything else in the file (comments, order, quoting) is kept. The new text is parsed
    again and must be the same suite plus exactly ``case``.

    Returns:
        The inserted text.

    Raises:
        SuiteFileError: the file is not a suite, ``spec.cases`` is not a block list, the case
            name is taken, or the result does not parse as the suite plus the case (the file
            is then left untouched).
    """
    text, suite = read_suite(path)
    if any(c.name == case.name for c in suite.spec.cases):
        raise SuiteFileError(f"suite {suite.metadata.name!r} already has a case {case.name!r}.")
    cases = _cases_node(text)
    inserted = render_case(case, indent=cases.start_mark.column, comment=comment)
    lines = text.splitlines(keepends=True)
    at = _last_line(cases) + 1
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    updated = "".join([*lines[:at], inserted, *lines[at:]])
    expected = suite.model_copy(
        update={"spec": suite.spec.model_copy(update={"cases": [*suite.spec.cases, case]})}
    )
    _check(path, updated, expected)
    _write(path, updated)
    return inserted


def _check(path: Path, updated: str, expected: EvalSuite) -> None:
    try:
        reparsed = _parse(updated, path)
    except SuiteFileError as exc:
        raise SuiteFileError(f"the case did not fit the file, which is unchanged: {exc}") from None
    if reparsed.model_dump() != expected.model_dump():
        raise SuiteFileError(
            f"adding the case would change more of {str(path)!r} than the case; the file is "
            "unchanged. Add it by hand (`--dry-run` prints it)."
        )


def _write(path: Path, text: str) -> None:
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(name, path.stat().st_mode & 0o7777)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
