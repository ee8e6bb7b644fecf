"""Reads of a tenant's ``Model`` documents (model aliases), latest versions only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Model, ModelDeployment, ModelSpec, parse_document
from corral.errors import ContractIssue, InvalidContract
from corral.registry._tables import ModelRow, ModelVersionRow

__all__ = ["BUILTIN_DEFAULT_MODEL", "default_models", "tenant_models"]

BUILTIN_DEFAULT_MODEL = ModelSpec(
    description="The embedded model (SmolLM2-135M through llama.cpp).",
    deployments=[ModelDeployment(provider="local", model="smollm2-135m", max_retries=0)],
)
"""The platform's ``default`` alias unless settings define one."""


def default_models(documents: Sequence[dict[str, Any]]) -> dict[str, ModelSpec]:
    """The platform's default set: ``Model`` documents from settings, plus ``default``.

    Args:
        documents: ``Model`` documents (``CORRAL_MODELS__DEFAULTS``).

    Returns:
        Alias -> spec; ``default`` is :data:`BUILTIN_DEFAULT_MODEL` unless a document names it.

    Raises:
        InvalidContract: a document is not a valid ``Model`` (source ``CORRAL_MODELS__DEFAULTS``).
    """
    found: dict[str, ModelSpec] = {"default": BUILTIN_DEFAULT_MODEL}
    issues: list[ContractIssue] = []
    for index, document in enumerate(documents):
        try:
            contract = parse_document(document)
        except InvalidContract as exc:
            issues += [
                ContractIssue("CORRAL_MODELS__DEFAULTS", index, i.path, None, i.message)
                for i in exc.issues
            ]
            continue
        if not isinstance(contract, Model):
            issues.append(
                ContractIssue("CORRAL_MODELS__DEFAULTS", index, "kind", None, "must be 'Model'")
            )
            continue
        found[contract.metadata.name] = contract.spec
    if issues:
        raise InvalidContract(issues)
    return found


async def tenant_models(session: AsyncSession, *, tenant_id: str) -> dict[str, Model]:
    """The latest version of every ``Model`` document of a tenant, by alias.

    Args:
        session: A read session.
        tenant_id: The tenant.

    Returns:
        Alias -> its ``Model`` document (with ``metadata.version`` set), sorted by alias.
    """
    rows = await session.execute(
        select(ModelVersionRow.document)
        .join(ModelRow, ModelVersionRow.model_id == ModelRow.id)
        .where(ModelRow.tenant_id == tenant_id)
        .where(ModelVersionRow.version == ModelRow.latest_version)
        .order_by(ModelRow.name)
    )
    models = (Model.model_validate(document) for document in rows.scalars())
    return {model.metadata.name: model for model in models}
