"""Loading contract documents from YAML with file, field path and line for every error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from corral.contracts._models import API_VERSION, Agent, McpServer, Policy, Tool
from corral.contracts._positions import Lines, collect_lines, dotted, line_of
from corral.errors import ContractIssue, InvalidContract

__all__ = ["KINDS", "Document", "load_documents", "load_paths", "parse_document"]

KINDS: dict[str, type[BaseModel]] = {
    "Agent": Agent,
    "McpServer": McpServer,
    "Policy": Policy,
    "Tool": Tool,
}
"""Contract kinds this version understands, by ``kind``."""

_Lines = Lines


@dataclass(frozen=True)
class Document:
    """One validated contract document and where it came from."""

    source: str
    index: int
    contract: Agent | McpServer | Policy | Tool


def load_paths(paths: Iterable[Path]) -> list[Document]:
    """Load every YAML document in files and directories (``*.yaml``/``*.yml``, recursive, sorted).

    In a directory, files of ``corral policy test`` cases are skipped.

    Raises:
        InvalidContract: with every problem found in every file; nothing is returned partially.
    """
    files: list[Path] = []
    issues: list[ContractIssue] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in {".yaml", ".yml"} and not _is_policy_case_file(p)
            )
            if not found:
                issues.append(ContractIssue(str(path), 0, "", None, "no *.yaml or *.yml files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            issues.append(ContractIssue(str(path), 0, "", None, "no such file or directory"))
    documents: list[Document] = []
    for file in files:
        try:
            documents.extend(load_documents(file.read_text(encoding="utf-8"), source=str(file)))
        except InvalidContract as exc:
            issues.extend(exc.issues)
        except UnicodeDecodeError as exc:
            issues.append(ContractIssue(str(file), 0, "", None, f"not UTF-8 text: {exc}"))
    if issues:
        raise InvalidContract(issues)
    return documents


def _is_policy_case_file(path: Path) -> bool:
    """Whether ``path`` holds ``corral policy test`` cases (a mapping with ``cases``, no ``kind``).

    Such files sit next to the Policy documents they test; applying a directory skips them.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return False  # reported when loaded as a contract
    return isinstance(data, dict) and "cases" in data and not {"apiVersion", "kind"} & set(data)


def load_documents(text: str, *, source: str = "<string>") -> list[Document]:
    """Parse and validate every document of a YAML stream.

    Args:
        text: YAML text, one or many documents separated by ``---``.
        source: Name used in error messages (a file path).

    Returns:
        The documents in order; empty documents are skipped.

    Raises:
        InvalidContract: YAML syntax errors, unknown kinds or invalid fields, each with its
            line (one-based) and field path.
    """
    loader = yaml.SafeLoader(text)
    documents: list[Document] = []
    issues: list[ContractIssue] = []
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            if data is None:  # an empty document, e.g. after a trailing ``---``
                index += 1
                continue
            lines: _Lines = {}
            collect_lines(node, (), lines)
            try:
                documents.append(Document(source, index, parse_document(data, lines=lines)))
            except InvalidContract as exc:
                issues.extend(
                    ContractIssue(source, index, i.path, i.line, i.message) for i in exc.issues
                )
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        issues.append(ContractIssue(source, index, "", line, f"invalid YAML: {problem}"))
    finally:
        loader.dispose()
    if issues:
        raise InvalidContract(issues)
    return documents


def parse_document(data: Any, *, lines: _Lines | None = None) -> Agent | McpServer | Policy | Tool:
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
    assert isinstance(contract, Agent | McpServer | Policy | Tool)
    return contract


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; `corral schema KIND` lists the fields)"
    return str(err["msg"])
