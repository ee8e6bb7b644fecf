"""The portal over HTTP (no browser): sessions, CSRF, security headers, permissions, actions.

On SQLite and PostgreSQL. Runs are driven with ``worker.run_until_idle()`` (no worker loop), so
every state a test looks at is reached deterministically.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _portal_kit import REQUESTER, ROLES, Portal, csrf_of, login, open_portal
from fastapi.routing import APIRoute
from markupsafe import escape

from conftest import agent_document, register
from corral.portal._routes import router
from corral.registry import list_agent_versions, stage_bindings
from corral.runtime import create_run, engage_kill_switch, get_run
from corral.settings import GovernanceSettings, Settings
from corral.tenancy import revoke_key


@pytest.fixture
def settings(tmp_path: Path, settings: Settings) -> Settings:
    return settings.model_copy(
        update={"governance": GovernanceSettings(roles=ROLES, policy_refresh_seconds=0)}
    )


@pytest.fixture
async def portal(settings: Settings) -> AsyncIterator[Portal]:
    async with open_portal(settings) as found:
        yield found


# --- sessions -------------------------------------------------------------------------------------


async def test_login_sets_a_signed_http_only_cookie_that_holds_no_key(portal: Portal) -> None:
    client = portal.client()
    response = await login(client, portal.keys["user:bob"])
    assert (response.status_code, response.headers["location"]) == (303, "/ui")
    cookie = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("corral_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http; see the https test below
    # crl_<key id>_<secret>; the secret may hold "_"
    secret = portal.keys["user:bob"].split("_", 2)[2]
    assert secret not in cookie and portal.keys["user:bob"] not in cookie
    page = await client.get("/ui")
    assert page.status_code == 200 and "user:bob" in page.text

    https = portal.client("https")
    response = await login(https, portal.keys["user:bob"])
    assert "Secure" in next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("corral_session=")
    )


async def test_a_wrong_key_or_a_forged_cookie_gets_no_session(portal: Portal) -> None:
    client = portal.client()
    response = await login(client, "crl_000000000000_" + "A" * 43)
    assert response.status_code == 401 and "Invalid API key" in response.text
    assert (await client.get("/ui/runs")).headers["location"] == "/ui/login"

    real = await portal.logged_in("user:dave")
    value = real.cookies["corral_session"]
    key_id, expires, nonce, mac = value.split(".")
    for forged in (
        f"{key_id}.{int(expires) + 999}.{nonce}.{mac}",  # a longer life, same MAC
        f"{portal.keys['user:bob'][4:16]}.{expires}.{nonce}.{mac}",  # another key's id
    ):
        other = portal.client()
        other.cookies.set("corral_session", forged, domain="corral.local", path="/ui")
        assert (await other.get("/ui/runs")).status_code == 303


async def test_a_revoked_key_ends_its_sessions_and_logout_ends_one(portal: Portal) -> None:
    client = await portal.logged_in("user:dave")
    assert (await client.get("/ui/runs")).status_code == 200
    key_id = portal.keys["user:dave"][4:16]
    admin = await portal.platform.identity.authenticate(f"Bearer {portal.keys['user:alice']}")
    admin_all = type(admin)(
        id="user:local-admin", tenant_id="default", roles=frozenset({"admin"}), kind="user"
    )
    await revoke_key(portal.platform.store, admin_all, key_id)
    portal.platform.identity.invalidate_key(key_id)  # as DELETE /v1/keys/{id} does
    assert (await client.get("/ui/runs")).headers["location"] == "/ui/login"

    bob = await portal.logged_in("user:bob")
    page = await bob.get("/ui")
    out = await bob.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    assert (await bob.get("/ui")).headers["location"] == "/ui/login"


async def test_every_page_sends_the_security_headers(portal: Portal) -> None:
    client = await portal.logged_in("user:alice")
    run_id, _ = await portal.paused_run()
    pages = ("/ui/login", "/ui", "/ui/runs", f"/ui/runs/{run_id}", "/ui/approvals")
    pages += ("/ui/agents", "/ui/agents/repo-analyst", "/ui/tools", "/ui/policies", "/ui/audit")
    for path in pages:
        response = await client.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in response.text and " style=" not in response.text
        assert re.search(r"<script[^>]* src=\"/ui/static/htmx.min.js\"", response.text)
    htmx = await client.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:2000]
    # The REST API is untouched by the portal's headers.
    assert "content-security-policy" not in (await client.get("/healthz")).headers


# --- actions: approve, cancel ---------------------------------------------------------------------


async def test_an_approver_approves_in_the_portal_and_the_run_resumes(portal: Portal) -> None:
    run_id, approval = await portal.paused_run()
    bob = await portal.logged_in("user:bob")
    queue = await bob.get("/ui/approvals")
    assert approval.id in queue.text and "ledger.write" in queue.text
    assert "0 of 1" in queue.text and REQUESTER in queue.text and "tool-write" in queue.text
    assert f'action="/ui/approvals/{approval.id}/approve"' in queue.text

    decided = await bob.post(
        f"/ui/approvals/{approval.id}/approve",
        data={"csrf_token": csrf_of(queue.text), "comment": "looks right"},
    )
    assert (decided.status_code, decided.headers["location"]) == (303, f"/ui/runs/{run_id}")
    assert await portal.status(run_id) == "QUEUED"
    await portal.platform.worker.run_until_idle()
    assert await portal.status(run_id) == "SUCCEEDED"
    assert portal.ledger.executions == [7]

    page = await bob.get(f"/ui/runs/{run_id}")
    assert "entry 7 written" in page.text and "&lt;tool_output" in page.text  # escaped
    assert 'id="waterfall"' in page.text and "invoke_agent" in page.text
    assert "require_approval" in page.text  # the stored policy decision of the call
    assert "approved" in page.text and "1/1" in page.text
    async with portal.platform.store.read("default") as session:
        run = await get_run(session, run_id, tenant_id="default")
    assert run.output and run.input_tokens > 0
    assert f'id="final-answer">{escape(run.output)}<' in page.text
    assert f"<dd>{run.input_tokens} in · {run.output_tokens} out</dd>" in page.text
    assert f"<dd>${run.cost_usd:.6f}</dd>" in page.text
    # The approver's comment is kept with the vote.
    decided_page = await bob.get("/ui/approvals", params={"status": "approved"})
    assert "user:bob: approve looks right" in decided_page.text


async def test_an_operator_cancels_a_run_in_the_portal(portal: Portal) -> None:
    run_id, _ = await portal.paused_run()
    alice = await portal.logged_in("user:alice")
    page = await alice.get(f"/ui/runs/{run_id}")
    assert 'id="cancel-run"' in page.text
    done = await alice.post(f"/ui/runs/{run_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 303
    assert await portal.status(run_id) == "CANCELLED"
    again = await alice.post(f"/ui/runs/{run_id}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 409 and "CANCELLED" in again.text


async def test_a_viewer_sees_no_buttons(portal: Portal) -> None:
    run_id, approval = await portal.paused_run()
    dave = await portal.logged_in("user:dave")
    queue = await dave.get("/ui/approvals")
    assert approval.id in queue.text
    assert "/approve" not in queue.text and "/reject" not in queue.text
    run = await dave.get(f"/ui/runs/{run_id}")
    assert run.status_code == 200 and "cancel-run" not in run.text


# --- refusals -------------------------------------------------------------------------------------

POST_PERMISSIONS = {
    "/ui/runs/{run_id}/cancel": "runs.control",
    "/ui/approvals/{approval_id}/approve": "approvals.decide",
    "/ui/approvals/{approval_id}/reject": "approvals.decide",
    "/ui/agents/{name}/promote": "releases.promote",
    "/ui/agents/{name}/rollback": "releases.promote",
    "/ui/tools/{name}/approve": "tools.approve",
    "/ui/policies/explain": "policies.read",
    "/ui/keys/{key_id}/revoke": "keys.manage",
    "/ui/tenancy/sign-out": "keys.manage",
}
"""Every portal POST that acts, with the permission its REST twin requires."""

UNGOVERNED_POSTS = {"/ui/login", "/ui/logout", "/ui/logout/everywhere"}
"""Open to every signed-in principal: they end only their own sessions."""


def _post_routes() -> set[str]:
    """Every POST route of the portal's router (the one ``mount_portal`` includes)."""
    return {
        route.path
        for route in router.routes
        if isinstance(route, APIRoute) and "POST" in route.methods
    }


async def test_every_portal_post_is_refused_without_its_permission(portal: Portal) -> None:
    assert _post_routes() == set(POST_PERMISSIONS) | UNGOVERNED_POSTS
    run_id, approval = await portal.paused_run()
    ids = {
        "run_id": run_id,
        "approval_id": approval.id,
        "name": "repo-analyst",
        "key_id": portal.keys["user:erin"][4:16],
    }
    # Dave (viewer) holds none; Bob lacks runs.control and releases.promote, Alice
    # approvals.decide.
    lacking = {
        "runs.control": ["user:dave", "user:bob"],
        "approvals.decide": ["user:dave", "user:alice"],
        "releases.promote": ["user:dave", "user:bob"],
        "tools.approve": ["user:dave", "user:alice", "user:bob"],
        "policies.read": ["user:eve"],
        "keys.manage": ["user:dave", "user:alice", "user:bob"],
    }
    for path, permission in POST_PERMISSIONS.items():
        for principal in lacking[permission]:
            client = await portal.logged_in(principal)
            token = csrf_of((await client.get("/ui")).text)
            response = await client.post(
                path.format(**ids),
                data={"csrf_token": token, "comment": "no", "version": "1", "stage": "staging"},
            )
            assert response.status_code == 403, (path, principal)
            assert "permission_denied" in response.text and permission in response.text
    assert await portal.status(run_id) == "AWAITING_APPROVAL"


async def test_a_forged_post_is_refused(portal: Portal) -> None:
    run_id, approval = await portal.paused_run()
    bob = await portal.logged_in("user:bob")
    other = await portal.logged_in("user:bob")  # another session of the same key
    foreign = csrf_of((await other.get("/ui")).text)
    path = f"/ui/approvals/{approval.id}/approve"
    for data, headers in (
        ({}, {}),
        ({"csrf_token": "x" * 43}, {}),
        ({"csrf_token": foreign}, {}),
        ({}, {"X-CSRF-Token": foreign}),
    ):
        response = await bob.post(path, data=data, headers=headers)
        assert response.status_code == 403 and "csrf_failed" in response.text
    assert await portal.status(run_id) == "AWAITING_APPROVAL"
    # Login is protected too (no login CSRF): a post without the form's token is refused.
    fresh = portal.client()
    refused = await fresh.post("/ui/login", data={"api_key": portal.keys["user:bob"]})
    assert refused.status_code == 403 and "corral_session" not in fresh.cookies
    # The htmx way: the session's token in the header is accepted.
    token = csrf_of((await bob.get("/ui")).text)
    ok = await bob.post(path, headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert (ok.status_code, ok.headers["hx-redirect"]) == (204, f"/ui/runs/{run_id}")


async def test_an_unknown_run_is_not_found(portal: Portal) -> None:
    alice = await portal.logged_in("user:alice")
    page = await alice.get("/ui/runs/run_doesnotexist")
    assert page.status_code == 404


# --- pages ----------------------------------------------------------------------------------------


async def test_the_overview_and_the_run_list_show_the_runs(portal: Portal) -> None:
    run_id, _ = await portal.paused_run()
    alice = await portal.logged_in("user:alice")
    overview = await alice.get("/ui")
    assert overview.status_code == 200
    assert "AWAITING_APPROVAL 1" in overview.text
    assert "ledger.write" in overview.text  # top tools by calls
    assert "<svg" in overview.text and "<rect" in overview.text
    runs = await alice.get("/ui/runs", params={"status": "AWAITING_APPROVAL"})
    assert run_id in runs.text and 'hx-trigger="every 2s, runs-changed"' in runs.text
    none = await alice.get("/ui/runs", params={"agent": "someone-else"})
    assert run_id not in none.text and "No runs match" in none.text
    bad = await alice.get("/ui/runs", params={"status": "NOPE"})
    assert bad.status_code == 400
    table = await alice.get("/ui/runs-table")
    assert run_id in table.text and "<html" not in table.text
    status = await alice.get(f"/ui/runs/{run_id}/status", params={"was": "AWAITING_APPROVAL"})
    assert "AWAITING_APPROVAL" in status.text and 'hx-trigger="every 1s"' in status.text


async def test_the_overview_lists_pending_approvals_and_engaged_kill_switches(
    portal: Portal,
) -> None:
    run_id, _ = await portal.paused_run()
    await register(portal.platform, agent_document("other-agent"))
    await engage_kill_switch(
        portal.platform.store,
        scope="agent",
        target="other-agent",
        tenant_id="default",
        reason="incident 7",
        actor="user:ops",
    )
    alice = await portal.logged_in("user:alice")
    page = (await alice.get("/ui")).text
    for tile in ("running now", "failure rate", "p50 run latency", "p95 run latency"):
        assert f"<span>{tile}" in page, tile
    assert "cost this week" in page and "Top agents by cost" in page
    pending = page[page.index("<h2>Pending approvals</h2>") :].split("</ul>")[0]
    assert f"{run_id}</a>" in pending and " · 0/1 · " in pending
    switches = page[page.index("<h2>Engaged kill switches</h2>") :].split("</ul>")[0]
    assert "<strong>agent other-agent</strong>: incident 7 (user:ops)" in switches


async def test_promote_and_roll_back_in_the_portal(portal: Portal) -> None:
    await register(portal.platform, agent_document(description="Second version."))
    async with portal.platform.store.read("default") as session:
        versions = [
            v.version
            for v in await list_agent_versions(session, "repo-analyst", tenant_id="default")
        ]
    newest, first = versions[0], versions[-1]
    alice = await portal.logged_in("user:alice")
    page = await alice.get("/ui/agents")
    assert "repo-analyst" in page.text and "platform-team" in page.text
    page = await alice.get("/ui/agents/repo-analyst")
    assert "Promote" in page.text and newest in page.text
    token = csrf_of(page.text)
    for version in (first, newest):
        done = await alice.post(
            "/ui/agents/repo-analyst/promote",
            data={"csrf_token": token, "version": version, "stage": "staging"},
        )
        assert done.status_code == 303, done.text
    assert await staging(portal) == newest
    back = await alice.post(
        "/ui/agents/repo-analyst/rollback", data={"csrf_token": token, "stage": "staging"}
    )
    assert back.status_code == 303
    assert await staging(portal) == first
    listed = (await alice.get("/ui/agents")).text
    row = listed[listed.index('href="/ui/agents/repo-analyst"') :].split("</tr>")[0]
    stages = re.findall(r'<span class="badge">([a-z]+ [0-9.]+)</span>', row)
    assert stages == [f"dev {newest}", f"staging {first}", f"production {first}"], row
    dave = await portal.logged_in("user:dave")
    viewer_page = await dave.get("/ui/agents/repo-analyst")
    assert viewer_page.status_code == 200
    assert "/promote" not in viewer_page.text and "/rollback" not in viewer_page.text


async def test_the_agent_page_lists_its_runs_with_their_cost(portal: Portal) -> None:
    run_id, _ = await portal.paused_run()
    async with portal.platform.store.read("default") as session:
        run = await get_run(session, run_id, tenant_id="default")
    dave = await portal.logged_in("user:dave")
    page = (await dave.get("/ui/agents/repo-analyst")).text
    runs = page[page.index("<h2>Latest runs</h2>") :]
    row = runs[runs.index(f'href="/ui/runs/{run_id}"') :].split("</tr>")[0]
    assert f"{run.agent_version} (production)" in row and "AWAITING_APPROVAL" in row
    assert f"${run.cost_usd:.6f}</td>" in row


async def staging(portal: Portal) -> str:
    async with portal.platform.store.read("default") as session:
        bindings = await stage_bindings(session, "repo-analyst", tenant_id="default")
    return next(b.version for b in bindings if b.stage == "staging")


def test_jinja2_is_imported_only_when_a_page_is_rendered(tmp_path: Path) -> None:
    """Building the app (as every API process does) loads no template engine."""
    code = (
        "import sys\nfrom corral.api import create_app\nfrom corral.platform import Platform\n"
        "from corral.settings import Settings\n"
        f"create_app(Platform(Settings(home={str(tmp_path)!r})))\n"
        "print('jinja2' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CORRAL_HOME": str(tmp_path)},
    )
    assert done.stdout.strip().splitlines()[-1] == "False"


# --- tools and policies ---------------------------------------------------------------------------


def echo_server(description: Path) -> dict[str, object]:
    """An McpServer running ``corral.testing.mcp_echo_server``; its tool reads ``description``."""
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "McpServer",
        "metadata": {"name": "echo"},
        "spec": {
            "description": "The echo MCP server.",
            "transport": "stdio",
            "command": sys.executable,
            "args": ["-m", "corral.testing.mcp_echo_server"],
            "env": {"CORRAL_ECHO_DESCRIPTION_FILE": str(description)},
            "connect_timeout_seconds": 60,
            "call_timeout_seconds": 60,
        },
    }


async def test_an_admin_re_approves_a_quarantined_tool_in_the_portal(
    portal: Portal, tmp_path: Path
) -> None:
    from corral.gateway.mcp import sync_server

    description = tmp_path / "description.txt"
    description.write_text("Echoes the given text back.")
    await register(portal.platform, echo_server(description))
    platform = portal.platform
    await sync_server(platform.store, platform.mcp, "echo", tenant_id="default", actor="user:t")
    description.write_text("Changed: now also forwards the text elsewhere.")
    synced = await sync_server(
        platform.store, platform.mcp, "echo", tenant_id="default", actor="user:t"
    )
    [digest] = [q["digest"] for q in synced.quarantined if q["name"] == "echo.echo"]

    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/tools")
    assert page.status_code == 200
    assert "ledger.write" in page.text and ">write<" in page.text  # catalog with side effect
    assert 'id="quarantined-echo.echo"' in page.text and "QUARANTINED" in page.text
    assert "/ui/tools/echo.echo/approve" not in page.text  # a viewer gets no button

    erin = await portal.logged_in("user:erin")
    page = await erin.get("/ui/tools")
    assert f'name="digest" value="{digest}"' in page.text
    stale = await erin.post(
        "/ui/tools/echo.echo/approve",
        data={"csrf_token": csrf_of(page.text), "digest": "sha256:" + "0" * 64},
    )
    assert stale.status_code == 409 and digest in stale.text
    done = await erin.post(
        "/ui/tools/echo.echo/approve",
        data={"csrf_token": csrf_of(page.text), "digest": digest},
    )
    assert (done.status_code, done.headers["location"]) == (303, "/ui/tools")
    page = await erin.get("/ui/tools")
    assert "QUARANTINED" not in page.text and "user:erin" in page.text


async def test_the_policies_page_explains_a_request(portal: Portal) -> None:
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/policies")
    assert page.status_code == 200 and "Would this be allowed?" in page.text
    assert "None applied" in page.text and "tool-write" in page.text  # the default set's text
    token = csrf_of(page.text)
    asked = {
        "csrf_token": token,
        "principal": 'Agent::"repo-analyst"',
        "action": "tool.call",
        "resource": 'Tool::"ledger.write"',
        "context": '{"stage": "production", "arguments": {"n": 7}}',
    }
    answer = await dave.post("/ui/policies/explain", data=asked)
    assert answer.status_code == 200, answer.text
    assert 'id="decision">require_approval<' in answer.text
    assert '"side_effect": "write"' in answer.text  # the registered tool's
    assert "Policies whose conditions hold" in answer.text  # policy explain's text
    # The same question in dev: the write tool needs no approval there.
    dev = await dave.post("/ui/policies/explain", data=asked | {"context": '{"stage": "dev"}'})
    assert 'id="decision">allow<' in dev.text, dev.text
    # A question that cannot be asked says why, next to the form.
    for field, value, problem in (
        ("context", "[1]", "Context is a JSON object"),
        ("context", "{", "Context is not JSON"),
        ("principal", "nobody", "Principal:"),
        ("resource", 'Planet::"mars"', "Unknown entity type"),
        ("action", "tool.fly", "Invalid request"),
    ):
        bad = await dave.post("/ui/policies/explain", data=asked | {field: value})
        assert bad.status_code == 400 and problem in bad.text, (field, bad.text[-1500:])
    # Another tenant's context is not honoured: the session's tenant is asked about.
    other = await dave.post("/ui/policies/explain", data=asked | {"context": '{"tenant": "acme"}'})
    assert (
        "tenant=&#39;default&#39;" in other.text and "requester=&#39;user:dave&#39;" in other.text
    )


async def test_the_audit_page_filters_pages_and_verifies_the_chain(portal: Portal) -> None:
    run_id, _ = await portal.paused_run()
    dave = await portal.logged_in("user:dave")
    page = await dave.get("/ui/audit")
    assert page.status_code == 200 and run_id in page.text
    assert 'id="chain-status"' not in page.text  # not verified on a page load
    mine = await dave.get("/ui/audit", params={"run_id": run_id})
    others = await dave.get("/ui/audit", params={"run_id": "run_nothere"})
    assert run_id in mine.text and "No events match" in others.text
    actions = set(re.findall(r"</td><td>user:[a-z]+</td><td>([a-z_.]+)</td>", mine.text))
    assert actions, mine.text[-3000:]
    action = sorted(actions)[0]
    by_action = await dave.get("/ui/audit", params={"action": action})
    listed = re.findall(r"</td><td>[^<]*</td><td>([a-z_.]+)</td><td>", by_action.text)
    assert listed and set(listed) == {action}
    by_actor = await dave.get("/ui/audit", params={"actor": "user:nobody"})
    assert "No events match" in by_actor.text
    assert (await dave.get("/ui/audit", params={"until": "2000-01-01T00:00"})).text.count(
        "No events match"
    ) == 1
    bad = await dave.get("/ui/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.text
    verified = await dave.get("/ui/audit/verify")
    assert 'id="chain-status">verified<' in verified.text
    eve = await portal.logged_in("user:eve")
    for path in ("/ui/audit", "/ui/audit/verify"):
        refused = await eve.get(path)
        assert refused.status_code == 403 and "audit.read" in refused.text


async def test_the_audit_page_pages_back_through_the_events(portal: Portal) -> None:
    from corral.portal._audit import PAGE_SIZE

    dave = await portal.logged_in("user:dave")
    older = None
    for _ in range(PAGE_SIZE):  # each production run writes a few events
        await portal.paused_run()
        first = await dave.get("/ui/audit")
        older = re.search(r'id="older" href="([^"]+)"', first.text)
        if older is not None:
            break
    assert older is not None, "a full page links to older events"
    second = await dave.get(older.group(1).replace("&amp;", "&"))
    rows = re.compile(r"<tr><td>(\d*)</td><td>\d{4}-")
    seen_first, seen_second = rows.findall(first.text), rows.findall(second.text)
    assert len(seen_first) == PAGE_SIZE and seen_second
    chained_first = [seq for seq in seen_first if seq]  # on PostgreSQL, unchained yet: no seq
    assert len(chained_first) == len(set(chained_first))
    assert not set(chained_first) & {seq for seq in seen_second if seq}


async def test_a_breached_objective_shows_a_banner_on_every_page(portal: Portal) -> None:
    from datetime import timedelta

    from corral.store import utcnow

    platform = portal.platform
    dave = await portal.logged_in("user:dave")
    assert 'id="slo-banner"' not in (await dave.get("/ui")).text
    # One iteration is not enough to write and answer: every run of "flaky" fails.
    flaky = agent_document(
        "flaky",
        tools={"allowed": ["ledger.*"]},
        limits={"max_iterations": 1},
        slo={"error_rate_max": 0.3, "min_runs": 2},
    )
    await register(platform, flaky)
    async with platform.store.transaction("default") as session:
        for _ in range(3):
            await create_run(
                session,
                tenant_id="default",
                agent_name="flaky",
                task="Write entry 7.",
                requested_by=REQUESTER,
            )
    await platform.worker.run_until_idle()
    breached = await platform.slo.evaluate(now=utcnow() + timedelta(seconds=1))
    assert [t.action for t in breached] == ["slo.breached"]

    # The banner's breaches are cached per app for a few seconds: start this app's cache over.
    portal.app.state.portal_breaches = {}  # type: ignore[attr-defined]
    fresh = dave
    for path in ("/ui", "/ui/runs", "/ui/agents", "/ui/tools", "/ui/policies", "/ui/audit"):
        page = await fresh.get(path)
        assert page.status_code == 200, path
        assert 'id="slo-banner"' in page.text and "flaky</a> error_rate 1" in page.text, path
    eve = await portal.logged_in("user:eve")  # reads no agents: no banner
    assert 'id="slo-banner"' not in (await eve.get("/ui")).text


async def test_the_overview_names_open_breakers_but_not_another_tenants(
    portal: Portal, tmp_path: Path
) -> None:
    platform = portal.platform
    await register(platform, echo_server(tmp_path / "description.txt"))
    models, tools = platform.models.breakers, platform.tools.resilience.breakers
    keys = [
        (models, "openai|https://user:pw@llm.example/v1|gpt-x"),
        (tools, "mcp:default/echo"),  # this tenant's server
        (tools, "mcp:acme/acme-private"),  # another tenant's server
    ]
    for breakers, key in keys:
        for _ in range(breakers.failure_threshold):
            await breakers.record_failure(key)
    dave = await portal.logged_in("user:dave")
    page = (await dave.get("/ui")).text
    listed = page[page.index('id="breakers"') :].split("</ul>")[0]
    assert "model openai/gpt-x</strong>: open" in listed
    assert "MCP server echo</strong>: open" in listed
    assert "1 other tool upstream(s)" in listed
    assert "acme" not in page and "user:pw" not in page


async def test_an_admin_sees_keys_and_quotas_and_revokes_a_key(portal: Portal) -> None:
    dave_key = portal.keys["user:dave"][4:16]
    dave = await portal.logged_in("user:dave")
    assert (await dave.get("/ui/tenancy")).status_code == 403
    assert "/ui/tenancy" not in (await dave.get("/ui")).text  # not in a viewer's navigation
    erin = await portal.logged_in("user:erin")
    page = await erin.get("/ui/tenancy")
    assert page.status_code == 200 and 'id="quotas"' in page.text
    assert f'id="key-{dave_key}"' in page.text and "portal-dave" in page.text
    assert 'id="tenants"' not in page.text  # a tenant admin is no platform admin
    # crl_<key id>_<secret>; the secret may hold "_"
    secret = portal.keys["user:dave"].split("_", 2)[2]
    assert secret not in page.text
    done = await erin.post(f"/ui/keys/{dave_key}/revoke", data={"csrf_token": csrf_of(page.text)})
    assert (done.status_code, done.headers["location"]) == (303, "/ui/tenancy")
    assert (await dave.get("/ui")).headers["location"] == "/ui/login"  # at once
    again = await erin.post(f"/ui/keys/{dave_key}/revoke", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 409
    unknown = await erin.post(
        "/ui/keys/000000000000/revoke", data={"csrf_token": csrf_of(page.text)}
    )
    assert unknown.status_code == 404
