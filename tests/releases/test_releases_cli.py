"""``corral rollout`` and ``corral experiments`` against a live server (SQLite, ScriptedModel)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import CliServer, agent_document, key_for
from corral.api import create_app
from corral.cli import app as cli
from corral.cli._client import auth_headers
from corral.platform import Platform
from corral.registry import Variant, bucket_of, choose_variant
from corral.settings import GovernanceSettings, Settings, get_settings
from corral.testing import ScriptedModel

AGENT = "repo-analyst"
runner = CliRunner()


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> tuple[str, Settings]:
    settings = Settings(
        home=tmp_path / "home",
        governance=GovernanceSettings(roles={"user:viewer": ["viewer"]}),
    )
    model = ScriptedModel(lambda request: ScriptedModel.answer("ok"))
    app = create_app(Platform(settings, providers={"scripted": model}), local_admin=True)
    url = cli_server(app, home=settings.home)
    documents = [agent_document(AGENT, description=f"Version {index}.") for index in range(2)]
    for document in documents:
        response = httpx.post(
            f"{url}/v1/apply", json={"documents": [document]}, headers=auth_headers()
        )
        assert response.status_code == 200, response.text
    return url, settings
    get_settings.cache_clear()


def invoke(*args: str) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_rollout_start_status_abort(server: tuple[str, Settings]) -> None:
    invoke("promote", f"{AGENT}@0.1.0", "--to", "staging")
    started = invoke(
        "rollout", "start", f"{AGENT}@0.1.1", "--stage", "staging", "--steps", "10,100",
        "--step-minutes", "5", "--shadow",
    )  # fmt: skip
    assert "0.1.0 -> 0.1.1 in staging, steps 0,10,100" in started
    status = invoke("rollout", "status", AGENT)
    assert "running at 0%" in status
    again = runner.invoke(cli, ["rollout", "start", f"{AGENT}@0.1.1", "--stage", "staging"])
    assert again.exit_code == 1 and "already splits" in again.output
    assert "aborted" in invoke("rollout", "abort", AGENT)
    bad = runner.invoke(cli, ["rollout", "start", f"{AGENT}@0.1.1", "--stage", "staging",
                              "--steps", "50,20"])  # fmt: skip
    assert bad.exit_code == 2 and "increasing" in bad.output


def test_experiments_start_status_stop(server: tuple[str, Settings]) -> None:
    invoke("promote", f"{AGENT}@0.1.0", "--to", "staging")
    started = invoke(
        "experiments", "start", "prompt-b", "--agent", AGENT, "--stage", "staging",
        "--variant", "control=0.1.0:50", "--variant", "treatment=0.1.1:50", "--key-by", "user",
    )  # fmt: skip
    experiment_id = started.split()[1]
    assert experiment_id.startswith("exp_")
    assert "prompt-b" in invoke("experiments", "status")
    assert "stop rule: collecting" in invoke("experiments", "status", experiment_id)
    assert f"experiment {experiment_id} (prompt-b): stopped" in invoke(
        "experiments", "stop", experiment_id
    )


def test_runs_of_one_session_get_one_variant_of_an_experiment_keyed_by_session(
    server: tuple[str, Settings],
) -> None:
    url, _ = server
    invoke("promote", f"{AGENT}@0.1.0", "--to", "staging")
    started = invoke(
        "experiments", "start", "by-session", "--agent", AGENT, "--stage", "staging",
        "--variant", "control=0.1.0:50", "--variant", "treatment=0.1.1:50", "--key-by", "session",
    )  # fmt: skip
    experiment_id = started.split()[1]
    arms = [Variant("control", "", "0.1.0", 5_000), Variant("treatment", "", "0.1.1", 5_000)]
    sessions: dict[str, str] = {}  # the first session hashing to each version
    for i in range(1_000):
        name = f"chat-{i}"
        sessions.setdefault(choose_variant(arms, bucket_of(experiment_id, name)).version, name)
    assert set(sessions) == {"0.1.0", "0.1.1"}
    for version, session_id in sessions.items():
        for _ in range(3):
            created = invoke("run", AGENT, "Hi", "--stage", "staging", "--session", session_id)
            assert f"({AGENT}@{version}," in created, created
        run_id = created.split()[1]
        run = httpx.get(f"{url}/v1/runs/{run_id}", headers=auth_headers()).json()
        assert run["session_id"] == session_id
    bad = runner.invoke(cli, ["run", AGENT, "Hi", "--stage", "staging", "--session", "a b"])
    assert bad.exit_code != 0
    assert "1 to 128 characters" in bad.output


def test_a_viewer_reads_but_cannot_start_and_another_tenant_sees_nothing(
    server: tuple[str, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, settings = server
    admin_headers = auth_headers()
    invoke("promote", f"{AGENT}@0.1.0", "--to", "staging")
    invoke("rollout", "start", f"{AGENT}@0.1.1", "--stage", "staging")
    monkeypatch.setenv("CORRAL_API_KEY", key_for(settings, "user:viewer"))
    assert "running at 5%" in invoke("rollout", "status", AGENT)
    refused = runner.invoke(cli, ["rollout", "abort", AGENT])
    assert refused.exit_code == 1 and "releases.promote" in refused.output
    created = httpx.post(f"{url}/v1/tenants", json={"id": "other"}, headers=admin_headers)
    assert created.status_code == 201, created.text
    other = key_for(settings, "user:x", ["admin"], tenant_id="other")
    headers = {"Authorization": f"Bearer {other}"}
    response = httpx.get(f"{url}/v1/agents/{AGENT}/rollout", headers=headers)
    assert response.status_code == 404
    assert httpx.get(f"{url}/v1/experiments", headers=headers).json() == []
