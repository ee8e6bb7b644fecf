"""The runs list's live status: the Server-Sent Events stream ``GET /ui/runs/events``.

On SQLite and PostgreSQL. The stream is read one batch at a time (``?once=1``, or
``portal.run_events_max_seconds = 0``), so no test waits on a clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from _portal_kit import REQUESTER, ROLES, Portal, apply_in_acme, open_portal

from conftest import agent_document
from corral.portal._live import _whole_instants, time_of
from corral.runtime import RunChange, cancel_run, create_run
from corral.settings import GovernanceSettings, PortalSettings, Settings


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0),
            "portal": PortalSettings(run_events_poll_seconds=0.5, run_events_max_seconds=0),
        }
    )


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    async with open_portal(settings) as found:
        yield found


# --- live run status ------------------------------------------------------------------------------


def events_of(body: str) -> list[tuple[str, dict[str, str]]]:
    """``(id, data)`` of each ``run`` event of a ``text/event-stream`` body."""
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and line[0] != ":")
        if fields.get("event") == "run":
            found.append((fields["id"], json.loads(fields["data"])))
    return found


async def read_batch(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    params = {"once": "1"}
    if "since" in headers:
        params["since"] = headers.pop("since")
    response = await client.get("/ui/runs/events", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response


async def test_the_stream_sends_the_tenants_status_changes_after_the_cursor(
    portal: Portal,
) -> None:
    alice = await portal.logged_in("user:alice")
    page = await alice.get("/ui/runs")
    match = re.search(r'data-events="/ui/runs/events\?since=([0-9]+)"', page.text)
    assert match is not None, page.text
    assert '<script src="/ui/static/runs-live.js" defer>' in page.text
    since = match.group(1)
    quiet = await read_batch(alice, since=since)
    assert events_of(quiet.text) == [] and ": heartbeat" in quiet.text
    assert quiet.text.startswith("retry: 500\n\n")  # the poll interval, in ms

    run_id, _ = await portal.paused_run()
    await apply_in_acme(portal, agent_document())
    async with portal.platform.store.transaction("acme") as session:
        acme_run = await create_run(
            session, tenant_id="acme", agent_name="repo-analyst", task="t", requested_by="u:x"
        )
    ((cursor, data),) = events_of((await read_batch(alice, since=since)).text)
    assert (data["id"], data["status"]) == (run_id, "AWAITING_APPROVAL")
    assert datetime.fromisoformat(data["updated_at"]) == time_of(int(cursor))
    everything = (await read_batch(alice, since="0")).text
    assert run_id in everything and acme_run.id not in everything  # acme's run is not ours

    # Resuming after the last event id: nothing new until the run changes again.
    assert events_of((await read_batch(alice, **{"Last-Event-ID": cursor})).text) == []
    await cancel_run(portal.platform.store, run_id, tenant_id="default", actor=REQUESTER)
    ((later, data),) = events_of((await read_batch(alice, **{"Last-Event-ID": cursor})).text)
    assert (data["id"], data["status"]) == (run_id, "CANCELLED") and int(later) > int(cursor)
    # The later of ``since`` and Last-Event-ID wins.
    both = await read_batch(alice, since=later, **{"Last-Event-ID": cursor})
    assert events_of(both.text) == []


async def test_the_stream_ends_after_its_max_duration(portal: Portal) -> None:
    run_id, _ = await portal.paused_run()
    dave = await portal.logged_in("user:dave")
    # No ``once``: run_events_max_seconds is 0 here, so the stream ends after its first read
    # (a stream that ignored the setting would never end and the test would time out).
    response = await dave.get("/ui/runs/events", params={"since": "0"})
    assert response.status_code == 200
    assert [data["id"] for _, data in events_of(response.text)] == [run_id]


async def test_the_stream_needs_a_session_and_a_well_formed_cursor(portal: Portal) -> None:
    anonymous = portal.client()
    refused = await anonymous.get("/ui/runs/events", params={"once": "1"})
    assert refused.status_code == 401 and "location" not in refused.headers
    eve = await portal.logged_in("user:eve")  # no role: may not read runs
    assert (await eve.get("/ui/runs/events", params={"once": "1"})).status_code == 403
    dave = await portal.logged_in("user:dave")
    for bad in ({"since": "-1"}, {"since": "1e9"}, {"since": "9" * 18}):
        assert (await dave.get("/ui/runs/events", params=bad)).status_code == 400, bad
    header = await dave.get("/ui/runs/events", headers={"Last-Event-ID": "abc"})
    assert header.status_code == 400


def test_a_full_batch_is_cut_before_its_last_instant() -> None:
    # The cursor is a time: the rows of the last instant go whole into the next read.
    t = datetime(2026, 1, 1, tzinfo=UTC)
    at = [t, t + timedelta(microseconds=1), t + timedelta(microseconds=1)]
    changes = [RunChange(f"run_{i}", "RUNNING", moment) for i, moment in enumerate(at)]
    assert _whole_instants(changes, limit=3) == changes[:1]
    assert _whole_instants(changes, limit=4) == changes  # not full: nothing is cut off
    same = [RunChange(f"run_{i}", "RUNNING", t) for i in range(3)]
    assert _whole_instants(same, limit=3) == same  # one instant: cutting it would stall
