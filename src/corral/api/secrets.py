"""Routes: ``/v1/secrets``: set, list and delete the tenant's secrets (the credential broker).

Values go in (``PUT``) and never come out: every response carries names, versions, who set
them and when. Tools receive values only at execution, through the tool gateway.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from corral.api._deps import Caller, PlatformDep, requires
from corral.api._schemas import Page, SecretOut, SecretSet
from corral.secrets import SECRET_NAME_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])

_Name = Annotated[
    str,
    Path(
        pattern=SECRET_NAME_PATTERN.pattern,
        description="A letter, then up to 127 letters, digits, `_`, `.` or `-`.",
    ),
]


@router.put(
    "/{name}",
    response_model=SecretOut,
    responses={201: {"model": SecretOut, "description": "The secret was created."}},
)
async def put_secret(
    name: _Name,
    body: SecretSet,
    response: Response,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("secrets.write")],
) -> SecretOut:
    """Create a secret (201) or rotate it (200): the new version is used from the next call.

    The value is encrypted before it is stored and is never returned. 400 for an invalid
    name (a letter, then up to 127 letters, digits, ``_``, ``.``, ``-``) or an oversized value;
    422 for an empty one.
    """
    info = await platform.secrets.set(
        caller.tenant_id, name, body.value.get_secret_value(), actor=caller.id
    )
    if info.version == 1:
        response.status_code = 201
    return SecretOut.model_validate(info)


@router.get("", response_model=Page[SecretOut])
async def get_secrets(
    platform: PlatformDep,
    caller: Annotated[Caller, requires("secrets.read")],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(description="Cursor: `next` of the previous page.")] = None,
) -> Page[SecretOut]:
    """The tenant's secrets by name, one page at a time: names and versions, never values."""
    infos = await platform.secrets.list(caller.tenant_id, limit=limit, after=after)
    items = [SecretOut.model_validate(info) for info in infos]
    return Page(items=items, next=items[-1].name if len(items) == limit else None)


@router.delete("/{name}", response_model=SecretOut)
async def delete_secret(
    name: _Name,
    platform: PlatformDep,
    caller: Annotated[Caller, requires("secrets.write")],
) -> SecretOut:
    """Delete a secret; tools referencing it fail until it is set again. 404 if unknown."""
    info = await platform.secrets.delete(caller.tenant_id, name, actor=caller.id)
    return SecretOut.model_validate(info)
