"""Loading contract documents from YAML with file, field path and line for every error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from corral.contracts._evals import EvalSuite
from corral.contracts._models import API_VERSION, Agent, McpServer, Model, Policy, Prompt, Tool
from corral.contracts._positions import Lines, dotted, line_of
from corral.contracts._yaml import YamlDocument, load_yaml, read_yaml_file
from corral.errors import ContractIssue, InvalidContract

__all__ = ["KINDS", "Document", "load_documents", "load_paths", "parse_document"]

KINDS: dict[str, type[BaseModel]] = {
    "Agent": Agent,
    "EvalSuite": EvalSuite,
    "McpServer": McpServer,
    "Model": Model,
    "Policy": Policy,
    "Prompt": Prompt,
    "Tool": Tool,
}
"""Contract kinds this version understands, by ``kind``."""

_Lines = Lines


@dataclass(frozen=True)
class Document:
    """One validated contract document and where it came from."""

    source: str
    index: int
    contract: Agent | EvalSuite | McpServer | Model | Policy | Prompt | Tool


def load_paths(paths: Sequence[Path]) -> list[Document]:
    """Load every YAML document in files and directories (``*.yaml``/``*.yml``, recursive, sorted).

    In a directory, files of ``corral policy test`` cases are skipped. Every file is read by
    :func:`load_yaml`, within its limits.

    Raises:
        InvalidContract: with every problem found in every file (or none holding a contract);
            nothing is returned partially.
    """
    files: list[tuple[Path, bool]] = []  # (file, found in a directory)
    issues: list[ContractIssue] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"})
            if not found:
                issues.append(ContractIssue(str(path), 0, "", None, "no *.yaml or *.yml files"))
            files.extend((file, True) for file in found)
        elif path.is_file():
            files.append((path, False))
        else:
            issues.append(ContractIssue(str(path), 0, "", None, "no such file or directory"))
    documents: list[Document] = []
    for file, in_directory in files:
        try:
            parsed = load_yaml(read_yaml_file(file), source=str(file))
            if not (in_directory and _is_policy_case_file(parsed)):
                documents.extend(_validated(parsed, str(file)))
        except InvalidContract as exc:
            issues.extend(exc.issues)
        except OSError as exc:
            issues.append(ContractIssue(str(file), 0, "", None, f"cannot read: {exc.strerror}"))
    if files and not documents and not issues:
        where = ", ".join(str(p) for p in paths)
        message = "no contract documents (files of `corral policy test` cases are skipped)"
        issues.append(ContractIssue(where, 0, "", None, message))
    if issues:
        raise InvalidContract(issues)
    return documents


def _is_policy_case_file(parsed: list[YamlDocument]) -> bool:
    """Whether a file holds ``corral policy test`` cases (a mapping with ``cases``, no ``kind``).

    Such files sit next to the Policy documents they test; applying a directory skips them.
    """
    if len(parsed) != 1:
        return False
    data = parsed[0].data
    return isinstance(data, dict) and "cases" in data and not {"apiVersion", "kind"} & set(data)


def load_documents(text: str, *, source: str = "<string>") -> list[Document]:
    """Parse and validate every document of a YAML stream.

    The text is read by :func:`load_yaml`, within its limits (size, aliases, depth) and
    refusing duplicate keys.

    Args:
        text: YAML text, one or many documents separated by ``---``.
        source: Name used in error messages (a file path).

    Returns:
        The documents in order; empty documents are skipped.

    Raises:
        InvalidContract: YAML syntax errors, refused YAML (see :func:`load_yaml`), unknown
            kinds or invalid fields, each with its line (one-based) and field path.
    """
    return _validated(load_yaml(text, source=source), source)


def _validated(parsed: list[YamlDocument], source: str) -> list[Document]:
    documents: list[Document] = []
    issues: list[ContractIssue] = []
    for yaml_document in parsed:
        if yaml_document.data is None:  # an empty document, e.g. after a trailing ``---``
            continue
        index = yaml_document.index
        try:
            contract = parse_document(yaml_document.data, lines=yaml_document.lines)
        except InvalidContract as exc:
            issues.extend(
                ContractIssue(source, index, i.path, i.line, i.message) for i in exc.issues
            )
        else:
            documents.append(Document(source, index, contract))
    if issues:
        raise InvalidContract(issues)
    return documents


def parse_document(
    data: Any, *, lines: _Lines | None = None
) -> Agent | EvalSuite | McpServer | Model | Policy | Prompt | Tool:
    """Validate one already-parsed document (a mapping with ``apiVersion`` and ``kind``).

    Raises:
        InvalidContract: naming each bad field (with its line when ``lines`` maps paths to lines).
    """
    lines = lines or {}

    def issue(path: tuple[str | int, ...], message: str) -> InvalidContract:
        return InvalidContract(
            [ContractIssue("<request>", 0, dotted(path), line_of(lines, path), message)]
        )

    if not isinstance(data, dict):
        raise issue((), f"a document must be a mapping, got {type(data).__name__}")
    if data.get("apiVersion") != API_VERSION:
        raise issue(("apiVersion",), f"must be {API_VERSION!r}, got {data.get('apiVersion')!r}")
    kind = data.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise issue(("kind",), f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    try:
        contract = model.model_validate(data)
    except ValidationError as exc:
        raise InvalidContract(
            [
                ContractIssue(
                    "<request>", 0, dotted(err["loc"]), line_of(lines, err["loc"]), _message(err)
                )
                for err in exc.errors(include_url=False)
            ]
        ) from None
    assert isinstance(contract, Agent | EvalSuite | McpServer | Model | Policy | Prompt | Tool)
    return contract


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; `corral schema KIND` lists the fields)"
    return str(err["msg"])
