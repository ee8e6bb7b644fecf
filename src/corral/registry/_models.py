"""Reads of a tenant's ``Model`` documents (model aliases), latest versions only."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.contracts import Model
from corral.registry._tables import ModelRow, ModelVersionRow

__all__ = ["tenant_models"]


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
