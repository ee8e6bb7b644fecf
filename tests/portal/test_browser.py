"""The portal in a real browser: Playwright driving Debian's chromium against a live server.

One server (uvicorn in a thread, SQLite, the worker running in it, a scripted model) serves
every test of the module. Each test logs in with a key through the login form. Screenshots of
a failing test are saved under ``$TMPDIR/corral-portal-screenshots/``.

Playwright is started and stopped by this module (pytest-playwright is not used, see
:func:`browser`). Skipped only when ``/usr/bin/chromium`` is missing and
``CORRAL_TEST_REQUIRE_BROWSER`` is not ``1`` (``scripts/test.sh`` installs chromium, sets it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _portal_kit import ROLES, Ledger, seed, write_then_answer
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from corral.api import create_app
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel, serve_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(tempfile.gettempdir()) / "corral-portal-screenshots"
WAIT_MS = 30_000
"""Upper bound for a run to reach a state the page waits for (a shared CI machine)."""


LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, never a downloaded browser; Playwright stopped after the module.

    Module-scoped, not pytest-playwright's session-scoped ``browser``: the sync API
    keeps an event loop running in the main thread while Playwright is started, and every
    async test that ran after it in the session would fail to start its own loop.
    """
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: `apt-get install chromium`"
        if os.environ.get("CORRAL_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@dataclass
class Live:
    base_url: str
    keys: dict[str, str]

    def start_paused_run(self) -> str:
        """Start a production run as Alice (REST); it will wait for approval of its write."""
        response = httpx.post(
            f"{self.base_url}/v1/agents/repo-analyst/runs",
            json={"task": "Write entry 7.", "stage": "production"},
            headers={"Authorization": f"Bearer {self.keys['user:alice']}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("portal-browser")
    settings = Settings(
        home=home / "home",
        runtime={"poll_interval_seconds": 0.05, "lease_seconds": 30},
        workspaces={"roots": [home]},
        governance={"roles": ROLES, "policy_refresh_seconds": 0},
    )
    ledger = Ledger()

    async def prepare() -> dict[str, str]:
        platform = Platform(settings, builtins=ledger.builtins())
        await platform.start()
        try:
            return await seed(platform)
        finally:
            await platform.close()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        keys = pool.submit(asyncio.run, prepare()).result()
    platform = Platform(
        settings,
        providers={"scripted": ScriptedModel(write_then_answer)},
        builtins=ledger.builtins(),
    )
    with serve_in_thread(create_app(platform)) as base_url:
        yield Live(base_url, keys)


@contextlib.contextmanager
def logged_in(browser: Browser, live: Live, principal: str, name: str) -> Iterator[Page]:
    """A page of a fresh browser context, logged in as ``principal``; screenshot on failure."""
    context = browser.new_context(base_url=live.base_url)
    page = context.new_page()
    try:
        page.goto("/ui/login")
        page.get_by_label("API key").fill(live.keys[principal])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        yield page
    except BaseException:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        raise
    finally:
        context.close()


def wait_for_status(page: Page, status: str) -> None:
    expect(page.locator("#run-status-badge")).to_have_text(status, timeout=WAIT_MS)


def test_approve_in_the_browser_and_watch_the_run_resume(browser: Browser, live: Live) -> None:
    run_id = live.start_paused_run()
    with logged_in(browser, live, "user:bob", "approve") as page:
        page.goto(f"/ui/runs/{run_id}")
        wait_for_status(page, "AWAITING_APPROVAL")  # live: the status panel polls
        page.get_by_role("link", name="Approvals").first.click()
        card = page.locator(".approval", has=page.get_by_role("link", name=run_id))
        expect(card).to_contain_text('"n": 7')
        card.get_by_label("Comment").fill("ok by me")
        card.get_by_role("button", name="Approve").click()
        expect(page).to_have_url(f"{live.base_url}/ui/runs/{run_id}")
        wait_for_status(page, "SUCCEEDED")
        expect(page.locator("#final-answer")).to_contain_text("entry 7 written")
        # The trace waterfall renders one row per stored span, the run's root span first.
        rows = page.locator("#waterfall .span-row")
        expect(rows.first).to_contain_text("invoke_agent")
        assert rows.count() >= 3
        # Spans sit on the trace's time axis: the last one starts right of the first.
        bars = page.locator("#waterfall rect.span-bar")
        first, last = bars.first.bounding_box(), bars.last.bounding_box()
        assert first is not None and last is not None and first["width"] > 0
        assert last["x"] > first["x"]


def test_cancel_a_run_in_the_browser(browser: Browser, live: Live) -> None:
    run_id = live.start_paused_run()
    with logged_in(browser, live, "user:alice", "cancel") as page:
        page.goto(f"/ui/runs/{run_id}")
        wait_for_status(page, "AWAITING_APPROVAL")
        page.get_by_role("button", name="Cancel run").click()
        wait_for_status(page, "CANCELLED")
        expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)


def test_a_viewer_sees_no_approve_button_and_a_forged_post_fails(
    browser: Browser, live: Live
) -> None:
    run_id = live.start_paused_run()
    with logged_in(browser, live, "user:dave", "viewer") as page:
        page.goto(f"/ui/runs/{run_id}")
        wait_for_status(page, "AWAITING_APPROVAL")
        expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
        page.goto("/ui/approvals")
        expect(page.locator(".approval", has=page.get_by_role("link", name=run_id))).to_be_visible()
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    with logged_in(browser, live, "user:bob", "forged") as page:
        page.goto("/ui/approvals")
        action = page.locator(".approval form.vote").first.get_attribute("action")
        assert action is not None
        # The browser's own session cookie, but no CSRF token: refused.
        forged = page.request.post(f"{live.base_url}{action}", form={"comment": "x"})
        assert forged.status == 403 and "csrf_failed" in forged.text()


def test_promote_a_version_in_the_browser(browser: Browser, live: Live) -> None:
    with logged_in(browser, live, "user:alice", "promote") as page:
        page.get_by_role("link", name="Agents").click()
        page.get_by_role("link", name="repo-analyst").click()
        expect(page.locator("#stage-staging")).to_have_count(0)
        version = page.get_by_label("Version").input_value()
        page.get_by_label("Stage").select_option("staging")
        page.get_by_role("button", name="Promote").click()
        expect(page.locator("#stage-staging")).to_contain_text(version)
        expect(page.locator("#stage-staging")).to_contain_text("user:alice")


def test_ask_the_policies_whether_a_call_would_be_allowed(browser: Browser, live: Live) -> None:
    with logged_in(browser, live, "user:dave", "policies") as page:
        page.get_by_role("link", name="Policies").click()
        page.get_by_label("Principal").fill('Agent::"repo-analyst"')
        page.get_by_label("Action").select_option("tool.call")
        page.get_by_label("Resource").fill('Tool::"ledger.write"')
        page.get_by_label("Context (JSON)").fill('{"stage": "production"}')
        page.get_by_role("button", name="Explain").click()
        expect(page.locator("#decision")).to_have_text("require_approval")
        expect(page.locator("#answer pre")).to_contain_text("Policies whose conditions hold")
        # The question stays in the form; in dev the same call is allowed.
        expect(page.get_by_label("Resource")).to_have_value('Tool::"ledger.write"')
        page.get_by_label("Context (JSON)").fill('{"stage": "dev"}')
        page.get_by_role("button", name="Explain").click()
        expect(page.locator("#decision")).to_have_text("allow")
        page.get_by_label("Context (JSON)").fill("not json")
        page.get_by_role("button", name="Explain").click()
        expect(page.locator("#answer")).to_contain_text("Context is not JSON")


def _serious(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"][:3])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_no_page_has_a_serious_accessibility_violation(browser: Browser, live: Live) -> None:
    run_id = live.start_paused_run()
    found: dict[str, list[str]] = {}
    with logged_in(browser, live, "user:erin", "axe") as page:
        page.goto(f"/ui/runs/{run_id}")
        wait_for_status(page, "AWAITING_APPROVAL")
        paths = [
            "/ui",
            "/ui/runs",
            f"/ui/runs/{run_id}",
            "/ui/approvals",
            "/ui/agents",
            "/ui/agents/repo-analyst",
            "/ui/tools",
            "/ui/policies",
            "/ui/audit",
            "/ui/audit/verify",
            "/ui/tenancy",
            "/ui/runs/run_doesnotexist",  # the error page
        ]
        for path in paths:
            page.goto(path)
            found[path] = _serious(page)
        page.goto("/ui/policies")
        page.get_by_role("button", name="Explain").click()
        expect(page.locator("#decision")).to_be_visible()
        found["/ui/policies/explain"] = _serious(page)
    context = browser.new_context(base_url=live.base_url)
    try:
        login = context.new_page()
        login.goto("/ui/login")
        found["/ui/login"] = _serious(login)
    finally:
        context.close()
    assert {path: issues for path, issues in found.items() if issues} == {}
