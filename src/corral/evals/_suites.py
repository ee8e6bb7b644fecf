"""Eval suites as immutable, content-addressed versions (applied like the registry's kinds)."""

from __future__ import annotations

import difflib
import hashlib
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import append_event, canonical_json
from corral.contracts import EvalSuite
from corral.errors import Conflict, NotFound
from corral.evals._tables import EvalSuiteRow, EvalSuiteVersionRow
from corral.registry import FIRST_VERSION, ApplyResult, next_patch
from corral.store import new_id, utcnow

__all__ = ["apply_suites", "get_suite_version", "suite_digest"]


def suite_digest(suite: EvalSuite) -> str:
    """``sha256:<hex>`` over the canonical JSON of the document without ``metadata.version``."""
    document = suite.model_dump(mode="json", by_alias=True)
    document["metadata"].pop("version", None)
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _diff(name: str, old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    def lines(document: dict[str, Any] | None) -> list[str]:
        if document is None:
            return []
        return yaml.safe_dump(document, sort_keys=False).splitlines(keepends=True)

    return "".join(
        difflib.unified_diff(lines(old), lines(new), f"{name} (current)", f"{name} (applied)")
    )


async def apply_suites(
    session: AsyncSession,
    suites: list[EvalSuite],
    *,
    tenant_id: str,
    actor: str,
    dry_run: bool = False,
) -> list[ApplyResult]:
    """Apply ``EvalSuite`` documents in the caller's transaction; unchanged ones are no-ops.

    A changed suite becomes a new immutable version, numbered as the registry numbers agents
    (its ``metadata.version``, else the latest's patch bumped), with an audit event.

    Raises:
        Conflict: a given version is not greater than the latest, or a suite appears twice.
    """
    results: list[ApplyResult] = []
    seen: set[str] = set()
    for suite in suites:
        name = suite.metadata.name
        if name in seen:
            raise Conflict(f"EvalSuite {name!r} appears twice; apply it once.")
        seen.add(name)
        results.append(await _apply_one(session, suite, tenant_id, actor, dry_run))
    return results


async def _apply_one(
    session: AsyncSession, suite: EvalSuite, tenant_id: str, actor: str, dry_run: bool
) -> ApplyResult:
    name, digest = suite.metadata.name, suite_digest(suite)
    document = suite.model_dump(mode="json", by_alias=True)
    row = (
        await session.execute(
            select(EvalSuiteRow).where(
                EvalSuiteRow.tenant_id == tenant_id, EvalSuiteRow.name == name
            )
        )
    ).scalar_one_or_none()
    latest = None if row is None else await _version_row(session, row, row.latest_version)
    if latest is not None and latest.digest == digest:
        return ApplyResult(
            "EvalSuite", name, "unchanged", latest.version, latest.version, digest, ""
        )
    explicit = suite.metadata.version
    if latest is None:
        version = explicit or FIRST_VERSION
    elif explicit is None:
        version = next_patch(latest.version)
    elif _semver(explicit) <= _semver(latest.version):
        raise Conflict(
            f"EvalSuite {name!r} version {explicit} is not greater than the latest version "
            f"{latest.version}, and the content differs; raise metadata.version or remove it "
            "to have the patch bumped."
        )
    else:
        version = explicit
    document["metadata"]["version"] = version
    previous = None if latest is None else latest.version
    result = ApplyResult(
        "EvalSuite",
        name,
        "created" if latest is None else "updated",
        version,
        previous,
        digest,
        _diff(name, None if latest is None else latest.document, document),
    )
    if not dry_run:
        await _store(session, row, latest, result, document, tenant_id, actor)
    return result


async def _store(
    session: AsyncSession,
    row: EvalSuiteRow | None,
    latest: EvalSuiteVersionRow | None,
    result: ApplyResult,
    document: dict[str, Any],
    tenant_id: str,
    actor: str,
) -> None:
    now = utcnow()
    if row is None:
        row = EvalSuiteRow(id=new_id("suite"), tenant_id=tenant_id, name=result.name)
        row.created_at = now
        session.add(row)
    row.latest_version = result.version
    row.updated_at = now
    await session.flush()
    session.add(
        EvalSuiteVersionRow(
            id=new_id("ver"),
            tenant_id=tenant_id,
            suite_id=row.id,
            version=result.version,
            ordinal=1 if latest is None else latest.ordinal + 1,
            digest=result.digest,
            document=document,
            created_at=now,
        )
    )
    await session.flush()
    await append_event(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action=f"evalsuite.{'created' if latest is None else 'version_created'}",
        subject=f"evalsuite:{result.name}@{result.version}",
        outcome="success",
        details={"digest": result.digest, "previous_version": result.previous_version},
    )


async def _version_row(
    session: AsyncSession, row: EvalSuiteRow, version: str
) -> EvalSuiteVersionRow | None:
    return (
        await session.execute(
            select(EvalSuiteVersionRow).where(
                EvalSuiteVersionRow.suite_id == row.id, EvalSuiteVersionRow.version == version
            )
        )
    ).scalar_one_or_none()


async def get_suite_version(
    session: AsyncSession, name: str, version: str | None = None, *, tenant_id: str
) -> tuple[EvalSuiteVersionRow, EvalSuite]:
    """A suite's version (``None``: the latest) and its parsed document.

    Raises:
        NotFound: no such suite or version in the tenant.
    """
    row = (
        await session.execute(
            select(EvalSuiteRow).where(
                EvalSuiteRow.tenant_id == tenant_id, EvalSuiteRow.name == name
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(
            f"EvalSuite {name!r} not found; register it with `corral apply -f FILE`.",
            kind="eval_suite",
            name=name,
        )
    found = await _version_row(session, row, version or row.latest_version)
    if found is None:
        raise NotFound(
            f"EvalSuite {name!r} has no version {version!r}; the latest is {row.latest_version}.",
            kind="eval_suite_version",
            name=f"{name}@{version}",
        )
    return found, EvalSuite.model_validate(found.document)
