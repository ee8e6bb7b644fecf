"""``corral policy test | explain | schema`` against a live server, and ``GET /v1/policies``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.cli import app
from corral.cli._client import auth_headers
from corral.policy import DEFAULT_POLICY_TEXT
from governance._live import serve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = EXAMPLES / "policies" / "cases.yaml"
GUARDRAILS = EXAMPLES / "policies" / "guardrails.yaml"

runner = CliRunner()


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    return serve(tmp_path, cli_server)


def corral(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_example_cases_pass_once_the_examples_are_applied(server: str) -> None:
    # Not applied yet: the guardrail cases fail against the defaults alone...
    code, output = corral("policy", "test", str(CASES))
    assert code == 1
    assert "FAIL  reading under secrets/ is denied" in output
    assert "expected deny, got allow (by tool-read-in-tenant)" in output
    # ...and pass with the local, unapplied Policy file.
    code, output = corral("policy", "test", str(CASES), "--policies", str(GUARDRAILS))
    assert code == 0, output
    assert "10 passed, 0 failed" in output

    code, output = corral("apply", "-f", str(EXAMPLES))
    assert code == 0, output
    assert "policy/guardrails created: 0.1.0" in output
    assert "agent/repo-analyst created: 0.1.0" in output

    code, output = corral("policy", "test", str(CASES))
    assert code == 0, output
    lines = output.splitlines()
    assert lines[1] == (
        'PASS  reading under secrets/ is denied: Agent::"repo-analyst" tool.call '
        'Tool::"fs.read_file" [stage production]: expected deny, got deny (by no-secrets-read)'
    )
    assert lines[-1] == f"10 passed, 0 failed ({CASES}; 15 policies)"

    body = httpx.get(f"{server}/v1/policies", headers=auth_headers()).json()
    assert body["tenant_id"] == "default"
    assert body["defaults"] == [{"id": "corral/defaults", "text": DEFAULT_POLICY_TEXT}]
    (item,) = body["items"]
    assert (item["name"], item["version"], item["source_id"]) == (
        "guardrails",
        "0.1.0",
        "guardrails@0.1.0",
    )
    assert item["digest"].startswith("sha256:") and "no-secrets-read" in item["cedar"]


def test_a_wrong_expectation_fails_with_exit_1(server: str, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        CASES.read_text().replace(
            "    context: {path: secrets/api-key.txt}\n"
            "    expect: {decision: deny, determining_policies: [no-secrets-read]}\n",
            "    context: {path: secrets/api-key.txt}\n    expect: allow\n",
        )
    )
    code, output = corral("policy", "test", str(cases), "--policies", str(GUARDRAILS))
    assert code == 1
    assert (
        'FAIL  reading under secrets/ is denied: Agent::"repo-analyst" tool.call '
        'Tool::"fs.read_file" [stage production]: expected allow, got deny (by no-secrets-read)'
    ) in output
    assert "      decision: expected 'allow', got 'deny' (Agents never read files under" in output
    assert output.splitlines()[-1].startswith("9 passed, 1 failed")


def test_a_malformed_case_file_exits_2_with_file_field_and_line(
    server: str, tmp_path: Path
) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES.read_text().replace("expect: allow\n", "expect: maybe\n", 1))
    line = CASES.read_text().splitlines().index("    expect: allow") + 1
    code, output = corral("policy", "test", str(cases))
    assert code == 2
    assert f"malformed case file {cases}" in output
    assert f"{cases}:{line}: cases[4].expect.decision:" in output

    code, output = corral("policy", "test", str(tmp_path / "missing.yaml"))
    assert code == 2


def test_an_invalid_local_policy_exits_2_naming_file_and_policy(
    server: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(GUARDRAILS.read_text().replace("principal.risk_tier", "principal.tier"))
    code, output = corral("policy", "test", str(CASES), "--policies", str(broken))
    assert code == 2
    assert f"{broken} (guardrails@local): high-risk-effects-need-risk-owner:" in output
    assert "attribute `tier` on entity type `Agent` not found" in output

    agent = EXAMPLES / "agents" / "repo-analyst.yaml"
    code, output = corral("policy", "test", str(CASES), "--policies", str(agent))
    assert code == 2
    assert "--policies takes Policy documents only" in output


def test_cases_run_without_a_server_with_no_applied(tmp_path: Path) -> None:
    code, output = corral(
        "policy", "test", str(CASES), "--policies", str(GUARDRAILS), "--no-applied"
    )
    assert code == 0, output
    assert "10 passed, 0 failed" in output


def test_explain_uses_registered_attributes_and_flags(server: str) -> None:
    assert corral("apply", "-f", str(EXAMPLES))[0] == 0

    code, output = corral(
        "policy",
        "explain",
        "--principal",
        "Agent::repo-analyst",
        "--action",
        "tool.call",
        "--resource",
        "Tool::fs.read_file",
        "--context",
        "path=./docs/../secrets/key.pem",
    )
    assert code == 0, output
    assert (
        'Agent::"repo-analyst" {"owner": "platform-team", "risk_tier": "low", '
        '"status": "active", "tenant": "default"}'
    ) in output
    assert '"side_effect": "read"' in output
    assert "no-secrets-read (deny-forbid): Agents never read files under secrets/." in output
    assert "Pass 1, all policies: deny-forbid(s) no-secrets-read hold -> deny" in output
    assert "Decision: deny" in output

    code, output = corral(
        "policy",
        "explain",
        "--principal",
        "Agent::repo-analyst",
        "--action",
        "tool.call",
        "--resource",
        "Tool::tickets.create",
        "--attr",
        "principal.risk_tier=high",
        "--attr",
        "side_effect=write",
        "--context",
        "stage=dev",
    )
    assert code == 0, output
    assert "Pass 2, with high-risk-effects-need-risk-owner assumed approved" in output
    assert "Decision: require_approval" in output
    assert "needs 1 approval(s) from role(s) risk-owner" in output

    code, output = corral(
        "policy",
        "explain",
        "--principal",
        "Agent::repo-analyst",
        "--action",
        "tool.call",
        "--resource",
        "Tool::tickets.create",
        "--attr",
        "colour=red",
    )
    assert code == 2
    assert "no attribute 'colour'" in output


def test_schema_prints_the_cedar_schema(server: str) -> None:
    code, output = corral("policy", "schema")
    assert code == 0
    schema = json.loads(output)
    assert set(schema[""]["entityTypes"]) >= {"Agent", "Tool", "User"}
    assert "tool.call" in schema[""]["actions"]
    assert httpx.get(f"{server}/v1/policies/schema", headers=auth_headers()).json() == schema
