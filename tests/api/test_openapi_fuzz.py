"""schemathesis over ``/openapi.json``: every route, every check, with a real admin key.

The in-process app (SQLite, no worker) is fuzzed operation by operation: no input may give a
5xx, every response must match the documented status codes, content types and schemas (errors
in Corral's ``ErrorOut`` shape), schema-valid requests must not be rejected (400/422), and
unsupported methods must answer 405 with a complete ``Allow``. Bounded for CI: a few
examples per operation, no deadline (a loaded machine is slow, not wrong).
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.engine import Status, events  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

from corral.api import create_app  # noqa: E402
from corral.platform import Platform  # noqa: E402
from corral.settings import Settings  # noqa: E402
from corral.tenancy import ROLES, create_tenant, issue_key, parse_key  # noqa: E402

MAX_EXAMPLES = 20
"""Generated requests per operation (besides schemathesis's coverage cases)."""

VICTIM = "fuzz-victim"
"""The tenant the fuzzer may suspend and resume; its own key's tenant stays active."""

LOOSER_SCHEMA = (
    ("POST", "/v1/apply"),
    ("POST", "/v1/agents"),
    ("PUT", "/v1/quotas/{name}"),
    ("POST", "/v1/experiments"),
    ("POST", "/v1/agents/{name}/rollouts"),
)
"""Operations whose rules go beyond what JSON Schema can say, so a schema-valid request may be
refused: contract documents (Cedar text must compile, a tool's schema must be a schema...),
quota limits (whole for counts: the body cannot depend on the path), experiment variants
(distinct names, weights summing to 100) and rollout steps (increasing, ending at 100)."""


@pytest.fixture
def fuzz_app(tmp_path: Any) -> tuple[Any, str, str]:
    """The app on a fresh SQLite home, the fuzzer's key (every role), a key id it may revoke."""
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        identity={"api_rate_limit": "1000000/minute"},
        secrets={"master_key": base64.b64encode(os.urandom(32)).decode()},
    )

    async def prepare() -> tuple[str, str]:
        platform = Platform(settings)
        await platform.start()
        try:
            await create_tenant(platform.store, tenant_id=VICTIM, display_name=None, actor="test")
            keys = [
                await issue_key(
                    platform.store,
                    server_secret=platform.identity.server_secret,
                    tenant_id="default",
                    principal=f"user:{name}",
                    roles=list(ROLES),
                    name=name,
                )
                for name in ("fuzzer", "victim")
            ]
            return keys[0], keys[1]
        finally:
            await platform.close()

    key, victim = asyncio.run(prepare())
    victim_id = parse_key(victim)
    assert victim_id is not None
    return create_app(Platform(settings), run_worker=False), key, victim_id[0]


def _config(key: str, victim_key_id: str) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": 20261206,
            "workers": 1,
            "headers": {"Authorization": f"Bearer {key}"},
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
            "suppress-health-check": ["all"],
            "operations": [
                *(
                    {
                        "include-path": path,
                        "include-method": method,
                        "checks": {"positive_data_acceptance": {"enabled": False}},
                    }
                    for method, path in LOOSER_SCHEMA
                ),
                {
                    "include-path-regex": "^/v1/tenants/\\{tenant_id\\}/",
                    "parameters": {"path.tenant_id": VICTIM},
                },
                {"include-path": "/v1/keys/{key_id}", "parameters": {"path.key_id": victim_key_id}},
            ],
        }
    )


def _failures(event: Any) -> list[str]:
    found = []
    for case_id, checks in event.recorder.checks.items():
        for check in checks:
            if check.status is Status.FAILURE and check.failure_info is not None:
                case = event.recorder.cases[case_id].value
                failure = check.failure_info.failure
                interaction = event.recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                answer = f"{response.status_code} {response.content[:300]!r}" if response else "-"
                found.append(
                    f"{case.method} {case.formatted_path} {case.query or ''} "
                    f"{str(case.body)[:80]}: {check.name}: "
                    f"{failure.title} -> {answer}"
                )
    return found


# pytest turns warnings into errors; hypothesis warns about its own large reprs, not Corral.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
# Every route times MAX_EXAMPLES requests: 60-200 s on a loaded 2-core machine, more as routes
# are added; the bound is the example count, not the clock.
@pytest.mark.timeout(900)
def test_every_route_keeps_its_openapi_contract(fuzz_app: tuple[Any, str, str]) -> None:
    app, key, victim_key_id = fuzz_app
    config = _config(key, victim_key_id)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    failures: list[str] = []
    tested: set[str] = set()
    requests = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested.add(event.recorder.label)
            requests += len(event.recorder.interactions)
            failures += _failures(event)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {event}")
    # Whatever the fuzzer did, its own key still works: the last way in held.
    with asgi.get_client(app) as client:
        response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    asgi.shutdown_lifespans()
    assert response.status_code == 200, response.text
    assert len(tested) >= 45, sorted(tested)
    assert requests >= 20 * len(tested), requests  # it did fuzz, not just load the schema
    assert not failures, "\n".join(sorted(set(failures)))
