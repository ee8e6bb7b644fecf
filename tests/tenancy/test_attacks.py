"""Bad input and attacks on identity and isolation (issue 6, "Bad input and attacks").

Tenant ``default`` (A) and tenant ``team-b`` (B) each hold an agent, runs and an approval
request; A's principals then try every way to reach B's objects (by id, by name, through list
filters, the SSE stream and approvals) and every way to gain a right they were not given. Each
attempt gets the right status and a body naming nothing of B's beyond what the caller sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import agent_document
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.store import utcnow
from corral.tenancy import ApiKeyRow
from corral.testing import ScriptedModel
from tenancy._world import World, live_world

B = "team-b"
B_AGENT = "b-secret-agent"
B_TASK = "B-TASK-marker-5c1e: list the ledger of team b"
B_POLICY = "b-listing-needs-approval"
A_AGENT = "a-agent"
A_OPS = "service:a-ops"
A_ROLES = ["admin", "builder", "operator", "approver", "viewer"]
"""Every tenant role, but not platform-admin (which may act in any tenant by design)."""


def listing_policy(name: str) -> dict[str, Any]:
    """fs.list_dir needs an approver (so a run pauses with an approval request)."""
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {
            "description": f"{name}: listing a directory needs an approver.",
            "cedar": f"""
@id("{name}")
@decision("require_approval")
@approver_role("approver")
@reason("{name}: listing needs an approver.")
forbid (principal, action == Action::"tool.call", resource == Tool::"fs.list_dir");
""",
        },
    }


def list_then_answer(request: ModelRequest) -> ToolCall | FinalAnswer:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("listed")
    if "answer at once" in request.messages[-1].content:
        return FinalAnswer("a answer")
    return ToolCall("call_0", "fs.list_dir", {"path": "."})


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def wait_status(world: World, tenant: str, run_id: str, statuses: set[str]) -> str:
    for _ in range(500):
        async with world.platform.store.read(tenant) as session:
            status = await session.scalar(select(RunRow.status).where(RunRow.id == run_id))
        if status in statuses:
            return str(status)
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} stayed {status}, expected one of {statuses}")


@dataclass
class TwoTenants:
    """A live world where B holds a paused run with a pending approval request."""

    world: World
    a_run: str
    b_run: str
    b_approval: str
    b_workspace: str
    b_key: dict[str, Any]

    def b_markers(self) -> set[str]:
        """Strings that only B's data contains."""
        return {
            B_AGENT,
            B_TASK,
            "B-TASK-marker-5c1e",
            B_POLICY,
            self.b_run,
            self.b_approval,
            self.b_workspace,
            "user:b-admin",
            "service:b-bot",
            self.b_key["id"],
        }

    async def as_a(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self.world.as_(method, url, principal=A_OPS, roles=A_ROLES, **kwargs)

    def leaks(self, response: httpx.Response, sent: Iterable[str] = ()) -> list[str]:
        """B's markers in the response, except those the caller sent itself."""
        echoed = set(sent)
        return sorted(m for m in self.b_markers() - echoed if m in response.text)


@asynccontextmanager
async def two_tenants(settings: Settings, tmp_path: Path) -> AsyncIterator[TwoTenants]:
    """The world of :class:`TwoTenants`.

    A context manager inside the test rather than a fixture: the app's lifespan must be entered
    and exited in the same task (the MCP endpoint's task group requires it).
    """
    a_ws, b_ws = tmp_path / "a-ws", tmp_path / "b-ws-9d2f"
    for ws in (a_ws, b_ws):
        ws.mkdir()
        (ws / "README.md").write_text("hello\n")
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        await world.tenant(B)
        as_b = {"tenant": B, "principal": "user:b-admin"}
        await ok(
            await world.as_(
                "POST",
                "/v1/apply",
                json={"documents": [agent_document(B_AGENT), listing_policy(B_POLICY)]},
                **as_b,
            )
        )
        b_key = await ok(
            await world.as_(
                "POST", "/v1/keys", json={"name": "b-bot", "roles": ["viewer"]}, **as_b
            ),
            201,
        )
        b_run = (
            await ok(
                await world.as_(
                    "POST",
                    f"/v1/agents/{B_AGENT}/runs",
                    json={"task": B_TASK, "stage": "dev", "workspace": str(b_ws)},
                    **as_b,
                ),
                201,
            )
        )["id"]
        await wait_status(world, B, b_run, {"AWAITING_APPROVAL"})
        [approval] = (await ok(await world.as_("GET", "/v1/approvals", **as_b)))["items"]

        await ok(
            await world.as_("POST", "/v1/apply", json={"documents": [agent_document(A_AGENT)]})
        )
        a_run = (
            await ok(
                await world.as_(
                    "POST",
                    f"/v1/agents/{A_AGENT}/runs",
                    json={"task": "answer at once", "stage": "dev", "workspace": str(a_ws)},
                ),
                201,
            )
        )["id"]
        await wait_status(world, "default", a_run, {"SUCCEEDED"})
        yield TwoTenants(world, a_run, b_run, approval["id"], str(b_ws), b_key)


async def b_is_untouched(two: TwoTenants) -> None:
    """B's run still waits and its approval request is still pending, with no votes."""
    async with two.world.platform.store.read(B) as session:
        run = await session.get(RunRow, two.b_run)
    assert run is not None and run.status == "AWAITING_APPROVAL"
    shown = await two.world.as_("GET", f"/v1/approvals/{two.b_approval}", tenant=B)
    assert (shown.json()["status"], shown.json()["votes"]) == ("pending", [])


# --- by id and by name ----------------------------------------------------------------------------


async def test_tenant_a_reaching_b_objects_by_id_gets_404_naming_nothing_of_b(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as two:
        run, approval = two.b_run, two.b_approval
        attempts: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", f"/v1/runs/{run}", None),
            ("GET", f"/v1/runs/{run}/steps", None),
            ("GET", f"/v1/runs/{run}/spans", None),
            ("GET", f"/v1/runs/{run}/events", None),
            ("POST", f"/v1/runs/{run}/cancel", None),
            ("POST", f"/v1/runs/{run}/resolve", {"resolution": "done"}),
            ("GET", f"/v1/approvals/{approval}", None),
            ("POST", f"/v1/approvals/{approval}/approve", {"comment": "sure"}),
            ("POST", f"/v1/approvals/{approval}/reject", {"reason": "no"}),
            ("DELETE", f"/v1/keys/{two.b_key['id']}", None),
            ("POST", "/v1/role-grants/revoke", {"subject": "service:b-bot", "role": "viewer"}),
        ]
        failures = []
        for method, url, body in attempts:
            response = await two.as_a(method, url, json=body)
            leaks = two.leaks(response, sent=[run, approval, two.b_key["id"], "service:b-bot"])
            if response.status_code != 404 or leaks:
                failures.append((method, url, response.status_code, leaks, response.text))
        assert failures == []
        await b_is_untouched(two)
        b_bot = {"Authorization": f"Bearer {two.b_key['key']}"}
        still = await two.world.client.get("/v1/whoami", headers=b_bot)
        assert (still.status_code, still.json()["tenant_id"]) == (200, B)


async def test_tenant_a_reaching_b_objects_by_name_gets_404(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as two:
        attempts: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", f"/v1/agents/{B_AGENT}", None),
            ("GET", f"/v1/agents/{B_AGENT}/versions", None),
            ("GET", f"/v1/agents/{B_AGENT}/stages", None),
            ("GET", f"/v1/agents/{B_AGENT}/promotions", None),
            ("POST", f"/v1/agents/{B_AGENT}/promotions", {"version": "0.1.0", "stage": "staging"}),
            ("POST", f"/v1/agents/{B_AGENT}/rollback", {"stage": "staging"}),
            ("POST", f"/v1/agents/{B_AGENT}/runs", {"task": "steal", "stage": "dev"}),
            ("POST", "/v1/kill-switches", {"scope": "agent", "target": B_AGENT, "reason": "x"}),
        ]
        failures = []
        for method, url, body in attempts:
            response = await two.as_a(method, url, json=body)
            if response.status_code != 404 or two.leaks(response, sent=[B_AGENT]):
                failures.append((method, url, response.status_code, response.text))
        assert failures == []
        # The 404 helps with A's own names only.
        missing = (await two.as_a("GET", f"/v1/agents/{B_AGENT}")).json()
        assert missing["known"] == [A_AGENT]
        async with two.world.platform.store.read(B) as session:
            runs = list(await session.scalars(select(RunRow.id)))
        assert runs == [two.b_run]


async def test_lists_and_filters_never_return_b_items(settings: Settings, tmp_path: Path) -> None:
    async with two_tenants(settings, tmp_path) as two:
        reads: list[tuple[str, dict[str, Any]]] = [
            ("/v1/runs", {}),
            ("/v1/runs", {"agent": B_AGENT}),
            ("/v1/runs", {"status": "AWAITING_APPROVAL"}),
            ("/v1/agents", {}),
            ("/v1/agents", {"after": "a"}),
            ("/v1/tools", {}),
            ("/v1/audit/events", {"limit": 1000}),
            ("/v1/audit/events", {"run_id": two.b_run}),
            ("/v1/audit/verify", {}),
            ("/v1/approvals", {}),
            ("/v1/approvals", {"run_id": two.b_run}),
            ("/v1/approvals", {"status": "pending"}),
            ("/v1/kill-switches", {"include_released": "true"}),
            ("/v1/policies", {}),
            ("/v1/keys", {"include_revoked": "true"}),
            ("/v1/role-grants", {}),
            ("/v1/quotas", {}),
            ("/v1/whoami", {}),
            (f"/v1/runs/{two.a_run}", {}),
            (f"/v1/runs/{two.a_run}/steps", {}),
            (f"/v1/runs/{two.a_run}/spans", {}),
            (f"/v1/runs/{two.a_run}/events", {}),
        ]
        failures = []
        for url, params in reads:
            response = await two.as_a("GET", url, params=params)
            if response.status_code != 200 or two.leaks(response, sent=map(str, params.values())):
                failures.append((url, params, response.status_code, two.leaks(response)))
        assert failures == []
        # A cursor naming B's run or approval is treated as one naming nothing at all.
        for url, field, b_id, unknown_id in [
            ("/v1/runs", "before", two.b_run, "run_0123456789abcdef"),
            ("/v1/approvals", "after", two.b_approval, "apr_0123456789abcdef"),
        ]:
            cursor = await two.as_a("GET", url, params={field: b_id})
            unknown = await two.as_a("GET", url, params={field: unknown_id})
            assert cursor.status_code == unknown.status_code, (cursor.text, unknown.text)
            assert cursor.text.replace(b_id, "X") == unknown.text.replace(unknown_id, "X")
        # Filters naming B's objects find nothing, rather than an error that confirms them.
        for url, params in [
            ("/v1/runs", {"agent": B_AGENT}),
            ("/v1/approvals", {"run_id": two.b_run}),
            ("/v1/audit/events", {"run_id": two.b_run}),
        ]:
            assert (await two.as_a("GET", url, params=params)).json()["items"] == [], url
        # A sees its own things.
        runs = (await two.as_a("GET", "/v1/runs")).json()["items"]
        assert [r["id"] for r in runs] == [two.a_run]
        stream = (await two.as_a("GET", f"/v1/runs/{two.a_run}/events")).text
        assert "event: run.finished" in stream


async def test_a_key_of_a_acting_in_b_is_403_and_b_chain_is_closed(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as two:
        for url in ("/v1/runs", "/v1/agents", f"/v1/runs/{two.b_run}", "/v1/whoami"):
            response = await two.as_a("GET", url, headers={"X-Corral-Tenant": B})
            assert response.status_code == 403, (url, response.text)
            assert not two.leaks(response, sent=[two.b_run]), url
        # Not even a platform admin gets the system scope by naming '*' as its tenant.
        for tenant in ("*", "", " ", "default' OR '1'='1"):
            odd = await two.world.as_("GET", "/v1/runs", headers={"X-Corral-Tenant": tenant})
            if tenant.strip():
                assert odd.status_code == 403, (tenant, odd.text)
            else:  # no tenant named (a value is trimmed, RFC 9110 section 5.5): the key's own
                assert [r["id"] for r in odd.json()["items"]] == [two.a_run]
        chain = await two.as_a("GET", "/v1/audit/events", params={"tenant": B})
        assert chain.status_code == 403 and not two.leaks(chain)
        # A tenant kill switch can only be one's own tenant.
        kill = await two.as_a(
            "POST", "/v1/kill-switches", json={"scope": "tenant", "target": B, "reason": "x"}
        )
        assert kill.status_code == 400, kill.text
        # Neither suspension nor tenant listing is a tenant admin's business.
        assert (await two.as_a("GET", "/v1/tenants")).status_code == 403
        suspend = await two.as_a("POST", f"/v1/tenants/{B}/suspend", json={"reason": "mine now"})
        assert suspend.status_code == 403
        await b_is_untouched(two)


async def test_a_revoked_or_expired_key_is_401_even_for_its_own_objects(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_tenants(settings, tmp_path) as two:
        world = two.world
        created = await ok(
            await world.as_("POST", "/v1/keys", json={"name": "short", "roles": ["viewer"]}), 201
        )
        auth = {"Authorization": f"Bearer {created['key']}"}
        assert (await world.client.get(f"/v1/runs/{two.a_run}", headers=auth)).status_code == 200
        await ok(await world.as_("DELETE", f"/v1/keys/{created['id']}"))
        revoked = await world.client.get(f"/v1/runs/{two.a_run}", headers=auth)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
        assert created["key"] not in revoked.text

        other = await ok(
            await world.as_("POST", "/v1/keys", json={"name": "later", "roles": ["viewer"]}), 201
        )
        async with world.platform.store.transaction("default") as session:
            row = await session.get(ApiKeyRow, other["id"])
            assert row is not None
            row.expires_at = utcnow() - timedelta(seconds=1)
        world.platform.identity.invalidate_key(other["id"])
        expired = await world.client.get(
            f"/v1/runs/{two.a_run}", headers={"Authorization": f"Bearer {other['key']}"}
        )
        assert expired.status_code == 401 and "expired" in expired.json()["message"]
        assert other["key"] not in expired.text


# --- privilege escalation -------------------------------------------------------------------------


async def test_a_builder_cannot_grant_itself_admin_or_mint_an_admin_key(settings: Settings) -> None:
    async with live_world(settings) as world:
        builder = {"principal": "service:ci", "roles": ["builder"]}
        grant = await world.as_(
            "POST", "/v1/role-grants", json={"subject": "service:ci", "role": "admin"}, **builder
        )
        assert grant.status_code == 403 and "members.manage" in grant.json()["message"]
        key = await world.as_(
            "POST", "/v1/keys", json={"name": "escalate", "roles": ["admin"]}, **builder
        )
        assert key.status_code == 403
        quota = await world.as_("PUT", "/v1/quotas/runs_per_day", json={"limit": 1}, **builder)
        assert quota.status_code == 403
        grants = (await world.as_("GET", "/v1/role-grants")).json()["items"]
        assert grants == []
        me = (await world.as_("GET", "/v1/whoami", **builder)).json()
        assert me["roles"] == ["builder"]


async def test_a_tenant_admin_cannot_make_platform_admins(settings: Settings) -> None:
    async with live_world(settings) as world:
        admin = {"principal": "service:tenant-admin", "roles": ["admin"]}
        key = await world.as_(
            "POST", "/v1/keys", json={"name": "god", "roles": ["platform-admin"]}, **admin
        )
        assert key.status_code == 403 and "platform-admin" in key.json()["message"]
        mixed = await world.as_(
            "POST",
            "/v1/keys",
            json={"name": "god2", "roles": ["viewer", "platform-admin"]},
            **admin,
        )
        assert mixed.status_code == 403
        grant = await world.as_(
            "POST",
            "/v1/role-grants",
            json={"subject": "service:tenant-admin", "role": "platform-admin"},
            **admin,
        )
        assert grant.status_code == 403
        tenant = await world.as_("POST", "/v1/tenants", json={"id": "mine"}, **admin)
        assert tenant.status_code == 403
        # An operator may kill its tenant's runs, not every tenant's.
        platform_kill = await world.as_(
            "POST",
            "/v1/kill-switches",
            json={"scope": "platform", "reason": "x"},
            principal="service:ops",
            roles=["operator"],
        )
        assert platform_kill.status_code == 403 and "platform" in platform_kill.json()["message"]
        keys = (await world.as_("GET", "/v1/keys")).json()["items"]
        assert [k["name"] for k in keys if k["name"].startswith("god")] == []


async def test_a_builder_cannot_run_in_production(settings: Settings, workspace: Path) -> None:
    async with live_world(settings, scripted=ScriptedModel([])) as world:
        await ok(await world.as_("POST", "/v1/apply", json={"documents": [agent_document()]}))
        refused = await world.as_(
            "POST",
            "/v1/agents/repo-analyst/runs",
            json={"task": "x", "stage": "production", "workspace": str(workspace)},
            principal="service:ci",
            roles=["builder"],
        )
        assert refused.status_code == 403 and "operator" in refused.json()["message"]
        # The API's default stage is production: leaving it out is no way around.
        default = await world.as_(
            "POST",
            "/v1/agents/repo-analyst/runs",
            json={"task": "x", "workspace": str(workspace)},
            principal="service:ci",
            roles=["builder"],
        )
        assert default.status_code == 403
        assert (await world.as_("GET", "/v1/runs")).json()["items"] == []


async def test_a_requester_cannot_approve_its_own_run(settings: Settings, workspace: Path) -> None:
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        await ok(
            await world.as_(
                "POST",
                "/v1/apply",
                json={"documents": [agent_document(), listing_policy("listing")]},
            )
        )
        # Two people: each key is its own user's (service accounts would count as their
        # creator and vote only where policy lets them; tests/approvals/test_accountable.py).
        alice = {"principal": "user:alice", "roles": ["builder", "approver"]}
        run_id = (
            await ok(
                await world.as_(
                    "POST",
                    "/v1/agents/repo-analyst/runs",
                    json={"task": "list it", "stage": "dev", "workspace": str(workspace)},
                    **alice,
                ),
                201,
            )
        )["id"]
        await wait_status(world, "default", run_id, {"AWAITING_APPROVAL"})
        [request] = (await world.as_("GET", "/v1/approvals", params={"run_id": run_id})).json()[
            "items"
        ]
        own = await world.as_("POST", f"/v1/approvals/{request['id']}/approve", **alice)
        assert (own.status_code, own.json()["code"]) == (403, "approval_self_approval")
        # A builder without the approver role is refused before the request is even read.
        builder = await world.as_(
            "POST",
            f"/v1/approvals/{request['id']}/approve",
            principal="service:ci",
            roles=["builder"],
        )
        assert builder.status_code == 403
        still = (await world.as_("GET", f"/v1/approvals/{request['id']}")).json()
        assert (still["status"], still["votes"]) == ("pending", [])
        bob = await world.as_(
            "POST",
            f"/v1/approvals/{request['id']}/approve",
            principal="user:bob",
            roles=["approver"],
        )
        assert bob.status_code == 200, bob.text
        assert await wait_status(world, "default", run_id, {"SUCCEEDED"}) == "SUCCEEDED"


async def test_a_killed_paused_run_leaves_the_approvals_readable(
    settings: Settings, workspace: Path
) -> None:
    """Killing or cancelling a run that waits withdraws its request; listing it is no 500.

    Found by the isolation property test: ``withdrawn`` was missing from the API's statuses.
    """
    async with live_world(settings, scripted=ScriptedModel(list_then_answer)) as world:
        docs = [agent_document(), listing_policy("listing")]
        await ok(await world.as_("POST", "/v1/apply", json={"documents": docs}))
        body = {"task": "list it", "stage": "dev", "workspace": str(workspace)}
        run_id = (
            await ok(await world.as_("POST", "/v1/agents/repo-analyst/runs", json=body), 201)
        )["id"]
        await wait_status(world, "default", run_id, {"AWAITING_APPROVAL"})
        await ok(await world.as_("POST", f"/v1/runs/{run_id}/cancel"))
        listed = await ok(await world.as_("GET", "/v1/approvals"))
        [request] = listed["items"]
        assert (request["status"], request["run_status"]) == ("withdrawn", "CANCELLED")
        shown = await ok(await world.as_("GET", f"/v1/approvals/{request['id']}"))
        assert shown["status"] == "withdrawn"
        filtered = await ok(await world.as_("GET", "/v1/approvals?status=withdrawn"))
        assert [a["id"] for a in filtered["items"]] == [request["id"]]
        vote = await world.as_(
            "POST",
            f"/v1/approvals/{request['id']}/approve",
            principal="service:bob",
            roles=["approver"],
        )
        assert vote.status_code == 409, vote.text


# --- oversized requests, rate limits, suspension --------------------------------------------------


@pytest.fixture
def small_limits(settings: Settings) -> Settings:
    identity = settings.identity.model_copy(
        update={"max_body_bytes": 4096, "max_header_bytes": 4096, "api_rate_limit": "5/minute"}
    )
    return settings.model_copy(update={"identity": identity})


async def test_oversized_bodies_and_headers_get_413(small_limits: Settings) -> None:
    async with live_world(small_limits) as world:
        auth = await world.headers()
        big = {"documents": [agent_document(description="x" * 8000)]}
        declared = await world.client.post("/v1/apply", json=big, headers=auth)
        assert declared.status_code == 413
        assert declared.json() == {
            "code": "payload_too_large",
            "message": "Request body exceeds 4096 bytes.",
        }

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        chunked = await world.client.post("/v1/apply", content=chunks(), headers=auth)
        assert chunked.status_code == 413, chunked.text
        # Before authentication: an anonymous flood is refused just the same.
        anonymous = await world.client.post("/v1/apply", content=b"x" * 5000)
        assert anonymous.status_code == 413
        header = await world.client.get("/v1/whoami", headers={**auth, "X-Pad": "a" * 5000})
        assert header.status_code == 413
        assert header.json()["message"] == "Request headers exceed 4096 bytes."
        giant_token = await world.client.get(
            "/v1/whoami", headers={"Authorization": "Bearer " + "e" * 6000}
        )
        assert giant_token.status_code == 413 and "eeeeeeee" not in giant_token.text
        # A body just under the limit is read normally (422: not a valid apply request).
        fits = await world.client.post("/v1/apply", content=b"{}", headers=auth)
        assert fits.status_code == 422


async def test_the_api_rate_limit_is_per_principal_with_retry_after(
    small_limits: Settings,
) -> None:
    async with live_world(small_limits) as world:
        hammer = await world.headers(principal="service:hammer", roles=["viewer"])
        for _ in range(5):
            assert (await world.client.get("/v1/agents", headers=hammer)).status_code == 200
        limited = await world.client.get("/v1/agents", headers=hammer)
        assert limited.status_code == 429
        retry = int(limited.headers["Retry-After"])
        assert 1 <= retry <= 60
        body = limited.json()
        assert (body["code"], body["quota"], body["limit"]) == (
            "quota_exceeded",
            "api_requests",
            "5 per 1 minute",
        )
        assert body["current"] == "5" and body["retry_after_seconds"] == retry
        assert "service:hammer" in body["message"]
        # Another principal of the same tenant is not held back.
        other = await world.headers(principal="service:calm", roles=["viewer"])
        assert (await world.client.get("/v1/agents", headers=other)).status_code == 200


async def test_a_suspended_tenant_is_403_with_the_reason_and_its_runs_end_killed(
    settings: Settings, workspace: Path
) -> None:
    gate = asyncio.Event()

    async def script(request: ModelRequest) -> ToolCall | FinalAnswer:
        task = request.messages[-1].content
        if "hold" in task and not any(m.role == "tool" for m in request.messages):
            await gate.wait()
            return ToolCall("call_0", "fs.read_file", {"path": "README.md"})
        return list_then_answer(request)

    one_worker = settings.model_copy(
        update={"runtime": settings.runtime.model_copy(update={"worker_concurrency": 1})}
    )
    async with live_world(one_worker, scripted=ScriptedModel(script)) as world:
        await world.tenant(B)
        as_b = {"tenant": B, "principal": "user:b-admin"}
        docs = [agent_document(B_AGENT), listing_policy(B_POLICY)]
        await ok(await world.as_("POST", "/v1/apply", json={"documents": docs}, **as_b))

        async def start(task: str) -> str:
            body = {"task": task, "stage": "dev", "workspace": str(workspace)}
            created = await world.as_("POST", f"/v1/agents/{B_AGENT}/runs", json=body, **as_b)
            return str((await ok(created, 201))["id"])

        paused = await start("list it")
        await wait_status(world, B, paused, {"AWAITING_APPROVAL"})
        running = await start("hold on")
        await wait_status(world, B, running, {"RUNNING"})
        queued = await start("answer at once, later")  # the one worker slot is taken
        await wait_status(world, B, queued, {"QUEUED"})

        suspended = await world.as_(
            "POST", f"/v1/tenants/{B}/suspend", json={"reason": "invoice overdue"}
        )
        assert suspended.status_code == 200, suspended.text
        assert await wait_status(world, B, queued, {"KILLED", "SUCCEEDED"}) == "KILLED"
        assert await wait_status(world, B, paused, {"KILLED", "SUCCEEDED"}) == "KILLED"

        refused = await world.as_("GET", "/v1/runs", **as_b)
        assert (refused.status_code, refused.json()["code"]) == (403, "tenant_suspended")
        assert "invoice overdue" in refused.json()["message"]
        bot = await world.as_("GET", "/v1/whoami", tenant=B, principal="service:b-bot")
        assert bot.status_code == 403

        gate.set()  # the running run's model call returns; its next step must not start
        assert await wait_status(world, B, running, {"KILLED", "SUCCEEDED", "FAILED"}) == "KILLED"
        # The default tenant is not affected.
        assert (await world.as_("GET", "/v1/runs")).status_code == 200
        refused_start = await world.as_(
            "POST",
            f"/v1/agents/{B_AGENT}/runs",
            json={"task": "again", "stage": "dev", "workspace": str(workspace)},
            **as_b,
        )
        assert refused_start.status_code == 403
