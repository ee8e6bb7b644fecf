"""Property: no response to tenant A ever holds an id or a name of another tenant.

Hypothesis generates, per example, a fresh pair of tenants A and B, each with random objects
made through the API (agents under random names, runs, approval requests, kill switches,
policies, API keys, role grants, quotas), then random API calls by A's principals: list reads
with filters, object reads and mutations with ids and names drawn from both tenants (and from
every tenant of earlier examples). No body may contain a foreign marker (an id, a name, a task
text) unless the caller sent it itself (a 404 names the id it did not find); no call may fail
with 5xx; no mutation aimed at another tenant may succeed or change anything there.

The app runs once per database; Hypothesis runs in a worker thread and sends each example's
requests to the app's event loop, so the lifespan is entered and exited in the test's task.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select

from conftest import agent_document
from corral.approvals._tables import ApprovalRow, ApprovalVoteRow
from corral.gateway.models import FinalAnswer, ModelRequest, ToolCall
from corral.runtime._tables import RunRow
from corral.settings import Settings
from corral.tenancy import QUOTA_NAMES, TENANT_ROLES, ApiKeyRow, RoleGrantRow
from corral.testing import ScriptedModel
from tenancy._world import World, live_world

T = TypeVar("T")

PRINCIPALS = {
    "service:p-admin": ["admin", "builder", "operator", "approver", "viewer"],
    "service:p-viewer": ["viewer"],
    "service:p-builder": ["builder"],
    "service:p-operator": ["operator"],
    "service:p-approver": ["approver"],
}
"""A's principals (every tenant role, never platform-admin)."""

MAX_EXAMPLES = int(os.environ.get("CORRAL_ISOLATION_EXAMPLES", "25"))
"""Examples per database; raise it (and set ``CORRAL_ISOLATION_RANDOM=1`` for fresh seeds) to
search longer than the suite's fixed, derandomized run."""

word = st.from_regex(r"[a-z][a-z0-9]{1,8}", fullmatch=True)


@dataclass(frozen=True)
class Objects:
    """What one tenant is given, before the example's unique tag makes names of it."""

    agents: list[tuple[str, bool]]
    """Agent name stems and whether the agent's contract needs an approval for fs.* calls."""
    runs: list[tuple[int, str]]
    """(agent index, task stem)."""
    kill_agent: int | None
    policy: str | None
    key: str | None
    grant: tuple[str, str] | None
    quota: tuple[str, int] | None


@st.composite
def objects(draw: st.DrawFn) -> Objects:
    agents = draw(
        st.lists(st.tuples(word, st.booleans()), min_size=1, max_size=3, unique_by=lambda a: a[0])
    )
    index = st.integers(0, len(agents) - 1)
    return Objects(
        agents=agents,
        runs=draw(st.lists(st.tuples(index, word), max_size=3)),
        kill_agent=draw(st.none() | index),
        policy=draw(st.none() | word),
        key=draw(st.none() | word),
        grant=draw(st.none() | st.tuples(word, st.sampled_from(TENANT_ROLES))),
        quota=draw(st.none() | st.tuples(st.sampled_from(QUOTA_NAMES), st.integers(0, 50))),
    )


CALLS = [
    "list_runs",
    "list_runs_by_agent",
    "list_runs_by_status",
    "list_runs_before",
    "list_agents",
    "list_tools",
    "list_audit",
    "list_audit_by_run",
    "verify_audit",
    "list_approvals",
    "list_approvals_by_run",
    "list_kill_switches",
    "list_policies",
    "list_keys",
    "list_grants",
    "list_quotas",
    "whoami",
    "get_run",
    "get_steps",
    "get_spans",
    "get_events",
    "get_approval",
    "get_agent",
    "get_versions",
    "get_stages",
    "get_promotions",
    "cancel",
    "resolve",
    "approve",
    "reject",
    "start_run",
    "kill_agent",
    "promote",
    "revoke_key",
    "revoke_grant",
    "act_in_other_tenant",
]

calls = st.lists(
    st.tuples(
        st.sampled_from(CALLS),
        st.integers(0, 10_000),
        st.sampled_from(sorted(PRINCIPALS)),
    ),
    min_size=5,
    max_size=20,
)


@dataclass
class Made:
    """One tenant's objects as created, and the strings only its data holds."""

    tenant: str
    agents: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    approvals: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    markers: set[str] = field(default_factory=set)


def script(request: ModelRequest) -> ToolCall | FinalAnswer:
    if any(m.role == "tool" for m in request.messages):
        return FinalAnswer("done")
    return ToolCall("call_0", "fs.list_dir", {"path": "."})


def policy_document(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {
            "description": f"{name} holds calls of a tool nobody has.",
            "cedar": f'@id("{name}")\n@decision("require_approval")\n@reason("{name}")\n'
            'forbid (principal, action == Action::"tool.call", resource == Tool::"x.unused");\n',
        },
    }


async def _ok(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200,)), response.text
    return response.json() if response.content else None


class Scenario:
    """Creates tenants with objects and plays calls against them, on the app's loop."""

    def __init__(self, world: World, workspace: Path) -> None:
        self.world = world
        self.workspace = str(workspace)
        self.counter = itertools.count()
        self.every: list[Made] = []

    async def make(self, side: str, spec: Objects) -> Made:
        tag = f"{side}{next(self.counter):04d}z"
        made = Made(tenant=f"p{tag}")
        made.markers.add(made.tenant)
        await self.world.tenant(made.tenant)
        admin = {
            "tenant": made.tenant,
            "principal": "service:p-admin",
            "roles": PRINCIPALS["service:p-admin"],
        }
        documents = []
        for stem, needs_approval in spec.agents:
            name = f"{stem}-{tag}"
            made.agents.append(name)
            rules = [{"tools": ["fs.*"]}] if needs_approval else []
            documents.append(agent_document(name, approvals=rules))
        if spec.policy:
            documents.append(policy_document(f"{spec.policy}-{tag}"))
            made.markers.add(f"{spec.policy}-{tag}")
        await _ok(await self.world.as_("POST", "/v1/apply", json={"documents": documents}, **admin))
        for n, (agent, stem) in enumerate(spec.runs):
            task = f"{stem} task-{tag}-{n}"
            made.markers.add(task)
            body = {"task": task, "stage": "dev", "workspace": self.workspace}
            run = await _ok(
                await self.world.as_(
                    "POST", f"/v1/agents/{made.agents[agent]}/runs", json=body, **admin
                ),
                201,
            )
            made.runs.append(run["id"])
        await self._settle(made)
        if spec.kill_agent is not None:
            reason = f"stop-{tag}"
            made.markers.add(reason)
            body = {"scope": "agent", "target": made.agents[spec.kill_agent], "reason": reason}
            await _ok(await self.world.as_("POST", "/v1/kill-switches", json=body, **admin), 201)
        if spec.key:
            key = await _ok(
                await self.world.as_(
                    "POST",
                    "/v1/keys",
                    json={"name": f"{spec.key}-{tag}", "roles": ["viewer"]},
                    **admin,
                ),
                201,
            )
            made.keys.append(key["id"])
            made.markers |= {key["id"], key["key"], f"service:{spec.key}-{tag}"}
        if spec.grant:
            subject = f"user:{spec.grant[0]}-{tag}"
            await _ok(
                await self.world.as_(
                    "POST",
                    "/v1/role-grants",
                    json={"subject": subject, "role": spec.grant[1]},
                    **admin,
                ),
                201,
            )
            made.subjects.append(subject)
            made.markers.add(subject)
        if spec.quota:
            await _ok(
                await self.world.as_(
                    "PUT", f"/v1/quotas/{spec.quota[0]}", json={"limit": spec.quota[1]}, **admin
                )
            )
        made.markers |= set(made.agents) | set(made.runs) | set(made.approvals)
        self.every.append(made)
        return made

    async def _settle(self, made: Made) -> None:
        """Wait until no run is queued or running, then note the approval requests."""
        store = self.world.platform.store
        for _ in range(1500):
            async with store.read(made.tenant) as session:
                busy = await session.scalar(
                    select(RunRow.id).where(RunRow.status.in_(("QUEUED", "RUNNING"))).limit(1)
                )
            if busy is None:
                break
            await asyncio.sleep(0.02)
        async with store.read(made.tenant) as session:
            made.approvals = list(await session.scalars(select(ApprovalRow.id)))

    async def snapshot(self, made: Made) -> tuple[Any, ...]:
        """What a foreign mutation could change: votes, revocations, grants, run statuses."""
        async with self.world.platform.store.read(made.tenant) as session:
            votes = list(await session.scalars(select(ApprovalVoteRow.id)))
            approvals = sorted(
                (await session.execute(select(ApprovalRow.id, ApprovalRow.status))).all()
            )
            revoked = sorted(
                await session.scalars(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_not(None)))
            )
            grants = sorted(await session.scalars(select(RoleGrantRow.subject)))
            runs = sorted((await session.execute(select(RunRow.id, RunRow.status))).all())
        return votes, approvals, revoked, grants, runs

    def request(self, a: Made, b: Made, kind: str, pick: int) -> tuple[str, str, dict[str, Any]]:
        """``(method, url, httpx kwargs)`` of one call; ids and names from both tenants."""

        def choose(values: list[str], fallback: str) -> str:
            pool = values or [fallback]
            return pool[pick % len(pool)]

        foreign = [m for m in self.every if m is not a]
        agent = choose(a.agents + [n for m in foreign for n in m.agents], "nobody")
        run = choose(a.runs + [r for m in foreign for r in m.runs], "run_none")
        b_run = choose(b.runs, "run_none")
        approval = choose(a.approvals + [x for m in foreign for x in m.approvals], "apr_none")
        b_approval = choose(b.approvals, "apr_none")
        b_agent = choose(b.agents, "nobody")
        simple: dict[str, tuple[str, str, dict[str, Any]]] = {
            "list_runs": ("GET", "/v1/runs", {}),
            "list_runs_by_agent": ("GET", "/v1/runs", {"params": {"agent": agent}}),
            "list_runs_by_status": ("GET", "/v1/runs", {"params": {"status": "AWAITING_APPROVAL"}}),
            "list_runs_before": ("GET", "/v1/runs", {"params": {"before": run}}),
            "list_agents": ("GET", "/v1/agents", {}),
            "list_tools": ("GET", "/v1/tools", {}),
            "list_audit": ("GET", "/v1/audit/events", {"params": {"limit": 1000}}),
            "list_audit_by_run": ("GET", "/v1/audit/events", {"params": {"run_id": run}}),
            "verify_audit": ("GET", "/v1/audit/verify", {}),
            "list_approvals": ("GET", "/v1/approvals", {}),
            "list_approvals_by_run": ("GET", "/v1/approvals", {"params": {"run_id": run}}),
            "list_kill_switches": (
                "GET",
                "/v1/kill-switches",
                {"params": {"include_released": "true"}},
            ),
            "list_policies": ("GET", "/v1/policies", {}),
            "list_keys": ("GET", "/v1/keys", {"params": {"include_revoked": "true"}}),
            "list_grants": ("GET", "/v1/role-grants", {}),
            "list_quotas": ("GET", "/v1/quotas", {}),
            "whoami": ("GET", "/v1/whoami", {}),
            "get_run": ("GET", f"/v1/runs/{run}", {}),
            "get_steps": ("GET", f"/v1/runs/{run}/steps", {}),
            "get_spans": ("GET", f"/v1/runs/{run}/spans", {}),
            # Only foreign runs: A's own streams would stay open while a run waits.
            "get_events": ("GET", f"/v1/runs/{b_run}/events", {}),
            "get_approval": ("GET", f"/v1/approvals/{approval}", {}),
            "get_agent": ("GET", f"/v1/agents/{agent}", {}),
            "get_versions": ("GET", f"/v1/agents/{agent}/versions", {}),
            "get_stages": ("GET", f"/v1/agents/{agent}/stages", {}),
            "get_promotions": ("GET", f"/v1/agents/{agent}/promotions", {}),
            "cancel": ("POST", f"/v1/runs/{b_run}/cancel", {}),
            "resolve": ("POST", f"/v1/runs/{b_run}/resolve", {"json": {"resolution": "done"}}),
            "approve": ("POST", f"/v1/approvals/{b_approval}/approve", {"json": {}}),
            "reject": ("POST", f"/v1/approvals/{b_approval}/reject", {"json": {"reason": "no"}}),
            "start_run": (
                "POST",
                f"/v1/agents/{b_agent}/runs",
                {"json": {"task": "t", "stage": "dev", "workspace": self.workspace}},
            ),
            "kill_agent": (
                "POST",
                "/v1/kill-switches",
                {"json": {"scope": "agent", "target": b_agent, "reason": "r"}},
            ),
            "promote": (
                "POST",
                f"/v1/agents/{b_agent}/promotions",
                {"json": {"version": "0.1.0", "stage": "staging"}},
            ),
            "revoke_key": ("DELETE", f"/v1/keys/{choose(b.keys, 'ffffffffffff')}", {}),
            "revoke_grant": (
                "POST",
                "/v1/role-grants/revoke",
                {
                    "json": {
                        "subject": choose(b.subjects, "user:none"),
                        "role": TENANT_ROLES[pick % len(TENANT_ROLES)],
                    }
                },
            ),
            "act_in_other_tenant": ("GET", "/v1/runs", {"headers": {"X-Corral-Tenant": b.tenant}}),
        }
        return simple[kind]

    async def play(
        self, spec_a: Objects, spec_b: Objects, plays: list[tuple[str, int, str]]
    ) -> None:
        a = await self.make("a", spec_a)
        b = await self.make("b", spec_b)
        before = await self.snapshot(b)
        foreign = set().union(*(m.markers for m in self.every if m is not a))
        problems = []
        for kind, pick, principal in plays:
            method, url, kwargs = self.request(a, b, kind, pick)
            response = await self.world.as_(
                method,
                url,
                tenant=a.tenant,
                principal=principal,
                roles=PRINCIPALS[principal],
                **kwargs,
            )
            sent = f"{url} {kwargs}"
            leaked = sorted(m for m in foreign if m in response.text and m not in sent)
            if leaked or response.status_code >= 500:
                problems.append((principal, method, url, kwargs, response.status_code, leaked))
            aimed_at_b = method != "GET" or kind in ("get_events", "act_in_other_tenant")
            if aimed_at_b and response.status_code < 400:
                problems.append(
                    (
                        "a call aimed at B succeeded",
                        principal,
                        method,
                        url,
                        kwargs,
                        response.status_code,
                        response.text[:300],
                    )
                )
        assert problems == []
        assert await self.snapshot(b) == before, "a call of tenant A changed tenant B"


def _thread_caller(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    def call(coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

    return call


async def test_no_response_to_tenant_a_holds_another_tenants_ids_or_names(
    settings: Settings, workspace: Path
) -> None:
    async with live_world(settings, scripted=ScriptedModel(script)) as world:
        scenario = Scenario(world, workspace)
        call = _thread_caller(asyncio.get_running_loop())

        @hsettings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=os.environ.get("CORRAL_ISOLATION_RANDOM") != "1",
            database=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.function_scoped_fixture,
                HealthCheck.data_too_large,
            ],
        )
        @given(spec_a=objects(), spec_b=objects(), plays=calls)
        def isolation_holds(spec_a: Objects, spec_b: Objects, plays: list[Any]) -> None:
            call(scenario.play(spec_a, spec_b, plays))

        await asyncio.to_thread(isolation_holds)
        assert len(scenario.every) >= 2 * MAX_EXAMPLES
