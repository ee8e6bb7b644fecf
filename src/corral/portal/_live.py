"""The runs list's live status: ``GET /ui/runs/events``, a Server-Sent Events stream.

The stream polls the store (:func:`corral.runtime.changed_runs`) every
``portal.run_events_poll_seconds`` and sends one ``run`` event per run whose row changed
after the client's cursor; the cursor is the event id, so a browser's ``EventSource``
resumes where it stopped (``Last-Event-ID``) when the stream ends after
``portal.run_events_max_seconds``. ``static/runs-live.js`` updates the page from it.

``_runs`` imports this module first: ``/runs/events`` must precede ``/runs/{run_id}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from fastapi import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from corral.errors import InvalidRequest, Unauthorized
from corral.portal._routes import router
from corral.portal._web import platform_of, require, session_of
from corral.runtime import MAX_EVENTS_READ, RunChange, changed_runs
from corral.store import Store, utcnow

__all__ = ["cursor_of", "run_events", "time_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR = re.compile(r"[0-9]{1,18}")
"""A cursor as ``since`` or ``Last-Event-ID`` carries it: microseconds since the Unix epoch."""


def cursor_of(moment: datetime) -> int:
    """``moment`` (aware) as the stream's cursor: whole microseconds since 1970-01-01 UTC."""
    return (moment - _EPOCH) // _MICROSECOND


def time_of(cursor: int) -> datetime:
    """The UTC time a cursor stands for (inverse of :func:`cursor_of`).

    Raises:
        InvalidRequest: the cursor lies beyond year 9999.
    """
    try:
        return _EPOCH + cursor * _MICROSECOND
    except OverflowError:
        raise InvalidRequest(
            f"Cursor {cursor} is past year 9999; send microseconds since 1970-01-01 UTC, "
            "as the stream's event ids are."
        ) from None


def _start_cursor(request: Request) -> int:
    """The later of ``?since=`` and ``Last-Event-ID``; neither: now (only later changes)."""
    given = [
        value
        for value in (request.query_params.get("since"), request.headers.get("last-event-id"))
        if value
    ]
    for value in given:
        if not _CURSOR.fullmatch(value):
            raise InvalidRequest(
                f"Cursor {value[:40]!r} is not a run event id; send the id of the last event "
                "received (microseconds since 1970-01-01 UTC, at most 18 digits)."
            )
    return max((int(v) for v in given), default=cursor_of(utcnow()))


def _event(change: RunChange, cursor: int) -> str:
    data = {"id": change.id, "status": change.status, "updated_at": change.updated_at.isoformat()}
    return f"id: {cursor}\nevent: run\ndata: {json.dumps(data)}\n\n"


def _whole_instants(changes: list[RunChange], limit: int) -> list[RunChange]:
    """A full batch minus its last instant's rows, which the next read returns whole.

    The cursor is a time: rows cut off the batch but changed at the same microsecond as its
    last row would be skipped by the next read (``updated_at > cursor``).
    """
    if len(changes) < limit or changes[0].updated_at == changes[-1].updated_at:
        return changes
    last = changes[-1].updated_at
    return [c for c in changes if c.updated_at != last]


async def _stream(
    request: Request,
    store: Store,
    tenant_id: str,
    cursor: int,
    *,
    poll_seconds: float,
    max_seconds: float,
    once: bool,
) -> AsyncIterator[str]:
    started = time.monotonic()
    yield f"retry: {round(poll_seconds * 1000)}\n\n"
    while True:
        async with store.read(tenant_id) as db:
            read = await changed_runs(
                db, tenant_id=tenant_id, since=time_of(cursor), limit=MAX_EVENTS_READ
            )
        batch = _whole_instants(read, MAX_EVENTS_READ)
        for change in batch:
            cursor = cursor_of(change.updated_at)
            yield _event(change, cursor)
        if not batch:
            yield ": heartbeat\n\n"
        if once or time.monotonic() - started >= max_seconds:
            return
        if len(read) == MAX_EVENTS_READ:
            continue  # more are waiting: read them now
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_seconds)


@router.get("/runs/events")
async def run_events(request: Request) -> Response:
    """Stream the tenant's run status changes as Server-Sent Events (``runs.read``).

    Each event is ``id: <cursor>``, ``event: run``, ``data: {"id", "status", "updated_at"}``
    for a run whose row changed after the cursor (``?since=`` or ``Last-Event-ID``, the
    later of the two: microseconds since 1970-01-01 UTC; neither: from now), oldest change
    first. ``: heartbeat`` comments keep a quiet stream open; the stream ends after
    ``portal.run_events_max_seconds`` (the browser reconnects with ``Last-Event-ID``), or
    after the first batch with ``?once=1``.

    Without a session: 401 (plain text, not the login redirect: ``EventSource`` cannot
    follow it). A malformed cursor: 400.
    """
    try:
        session = await session_of(request)
    except Unauthorized as exc:
        return PlainTextResponse(exc.message, status_code=401)
    require(session, "runs.read")
    cursor = _start_cursor(request)
    time_of(cursor)  # 400 before the stream starts
    platform = platform_of(request)
    settings = platform.settings.portal
    stream = _stream(
        request,
        platform.store,
        session.principal.tenant_id,
        cursor,
        poll_seconds=settings.run_events_poll_seconds,
        max_seconds=settings.run_events_max_seconds,
        once=request.query_params.get("once") == "1",
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
