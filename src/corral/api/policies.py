"""Routes: ``/v1/policies``: the tenant's effective policy set and the Cedar schema.

Policy documents are applied with ``POST /v1/apply`` like every contract; these routes read
what the tenant's engine is built from (the default set, then the latest version of each
applied ``Policy`` document), so ``corral policy test`` and ``corral policy explain`` can
compile the same set locally.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter

from corral.api._deps import Caller, ReadSessionDep, requires
from corral.api._schemas import PolicyOut, PolicySetOut, PolicySourceOut
from corral.policy import (
    DEFAULT_POLICIES,
    applied_policies,
    cedar_schema,
    policy_sources,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/policies", tags=["policies"])


@router.get("", response_model=PolicySetOut)
async def get_policies(
    session: ReadSessionDep, caller: Annotated[Caller, requires("policies.read")]
) -> PolicySetOut:
    """The tenant's effective policy set: the default set's text and every Policy document.

    Each document is at its latest version, by name. Compiling ``defaults`` then ``items``
    (each as the source ``source_id`` with the text ``cedar``) gives the engine the tenant's
    decisions are made with. Not paginated: the whole set is needed to compile it.
    """
    items = []
    for policy, version in await applied_policies(session, tenant_id=caller.tenant_id):
        document = dict(version.document)
        # The source id the engine gives the document (names a lone policy without @id).
        source = policy_sources([document])[-1]
        items.append(
            PolicyOut(
                name=policy.name,
                version=version.version,
                digest=version.digest,
                description=document["spec"]["description"],
                cedar=source.text,
                source_id=source.id,
                created_at=policy.created_at,
                updated_at=policy.updated_at,
            )
        )
    return PolicySetOut(
        tenant_id=caller.tenant_id,
        defaults=[PolicySourceOut(id=s.id, text=s.text) for s in DEFAULT_POLICIES],
        items=items,
    )


@router.get("/schema")
async def get_policy_schema(
    _caller: Annotated[Caller, requires("policies.read")],
) -> dict[str, Any]:
    """The Cedar JSON schema policies are validated and evaluated against.

    Format: https://docs.cedarpolicy.com/schema/json-schema.html (namespace-less: policies
    say ``Tool``, ``Action::"tool.call"``).
    """
    return cedar_schema()
