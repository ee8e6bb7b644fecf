"""The caches over the store: every worker and API replica shares the same entries.

A read is one primary-key lookup (tenant, digest) that ignores expired rows; a write replaces
the entry under its key (an upsert, so concurrent writers of one key do not conflict) and first
deletes the tenant's expired entries, so the tables stay as small as their live entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, delete, select

from corral.cache._tables import ModelResponseCacheRow, ToolResultCacheRow
from corral.gateway.models import CachedResponse, response_document, response_from_document
from corral.gateway.tools import ToolResult, result_document, result_from_document
from corral.store import Store, insert_on_conflict, utcnow

__all__ = ["StoreResponseCache", "StoreToolResultCache"]

_RESPONSES: Table = ModelResponseCacheRow.__table__  # type: ignore[assignment]
_RESULTS: Table = ToolResultCacheRow.__table__  # type: ignore[assignment]


def _read(
    table: Table, column: str, tenant_id: str, digest: str, now: datetime, connection: Connection
) -> dict[str, Any] | None:
    value: dict[str, Any] | None = connection.execute(
        select(table.c[column]).where(
            table.c.tenant_id == tenant_id,
            table.c.digest == digest,
            table.c.expires_at > now,
        )
    ).scalar_one_or_none()
    return value


def _write(table: Table, values: dict[str, Any], connection: Connection) -> None:
    connection.execute(
        delete(table).where(
            table.c.tenant_id == values["tenant_id"], table.c.expires_at <= values["created_at"]
        )
    )
    insert = insert_on_conflict(table, connection.dialect.name)
    replaced = {k: v for k, v in values.items() if k not in ("tenant_id", "digest")}
    connection.execute(
        insert.values(**values).on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.digest], set_=replaced
        )
    )


class _StoreCache:
    def __init__(self, store: Store, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.clock = clock

    async def _get(self, table: Table, column: str, tenant_id: str, digest: str) -> Any:
        read = functools.partial(_read, table, column, tenant_id, digest, self.clock())
        return await self.store.read_sync(read, tenant_id)

    async def _put(
        self, table: Table, tenant_id: str, digest: str, ttl: timedelta, **columns: Any
    ) -> None:
        now = self.clock()
        values = {
            "tenant_id": tenant_id,
            "digest": digest,
            "created_at": now,
            "expires_at": now + ttl,
            **columns,
        }
        await self.store.run_sync(functools.partial(_write, table, values), tenant_id)


class StoreResponseCache(_StoreCache):
    """The model gateway's :class:`~corral.gateway.models.ResponseCache` over the store.

    Args:
        store: The store (table ``model_response_cache``).
        clock: Current UTC time (tests pass a :class:`~corral.testing.ManualClock`).
    """

    async def get(self, tenant_id: str, digest: str) -> CachedResponse | None:
        """The tenant's live entry under ``digest`` (served as a cache hit), or ``None``."""
        document = await self._get(_RESPONSES, "response", tenant_id, digest)
        return None if document is None else response_from_document(document)

    async def put(
        self, tenant_id: str, digest: str, entry: CachedResponse, *, ttl: timedelta
    ) -> None:
        """Keep ``entry`` for ``ttl`` from now, replacing any entry under ``digest``."""
        await self._put(_RESPONSES, tenant_id, digest, ttl, response=response_document(entry))


class StoreToolResultCache(_StoreCache):
    """The tool gateway's :class:`~corral.gateway.tools.ToolResultCache` over the store.

    Args:
        store: The store (table ``tool_result_cache``).
        clock: Current UTC time (tests pass a :class:`~corral.testing.ManualClock`).
    """

    async def get(self, tenant_id: str, digest: str) -> ToolResult | None:
        """The tenant's live result under ``digest``, or ``None``."""
        document = await self._get(_RESULTS, "result", tenant_id, digest)
        return None if document is None else result_from_document(document)

    async def put(
        self, tenant_id: str, digest: str, result: ToolResult, *, tool: str, ttl: timedelta
    ) -> None:
        """Keep ``result`` of ``tool`` for ``ttl`` from now, replacing any under ``digest``."""
        await self._put(_RESULTS, tenant_id, digest, ttl, tool=tool, result=result_document(result))
