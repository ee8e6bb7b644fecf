"""``corral models list|describe|test`` against a live API (SQLite), through the REST client."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliServer
from corral.api import create_app
from corral.cli import app
from corral.errors import ModelAPIError
from corral.gateway.models import FinalAnswer, ModelRequest
from corral.platform import Platform
from corral.settings import Settings
from corral.testing import ScriptedModel

MODELS = """\
apiVersion: corral.dev/v1
kind: Model
metadata: {name: smart}
spec:
  description: Down first, then the spare.
  deployments:
    - {provider: down, model: d1, region: eu-west, weight: 1000, max_retries: 0}
    - {provider: spare, model: s1, region: eu-west}
"""


def _down(_request: ModelRequest) -> FinalAnswer:
    raise ModelAPIError("upstream returned 503", provider="down", status_code=503)


@pytest.fixture
def server(tmp_path: Path, cli_server: CliServer) -> str:
    settings = Settings(home=tmp_path / "home", workspaces={"roots": [tmp_path]})
    providers = {
        "down": ScriptedModel(_down, name="down"),
        "spare": ScriptedModel(lambda _r: ScriptedModel.answer("ok"), name="spare"),
    }
    app_ = create_app(Platform(settings, providers=providers), local_admin=True)
    return cli_server(app_, home=settings.home)


runner = CliRunner()


def test_models_list_describe_and_test(server: str, tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(MODELS)
    applied = runner.invoke(app, ["apply", "-f", str(tmp_path / "models.yaml")])
    assert applied.exit_code == 0, applied.output

    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["ALIAS", "SOURCE", "DEPLOYMENTS", "MODELS", "REGIONS"]
    assert lines[1].split()[:3] == ["default", "platform", "1"]
    assert lines[2].split()[:3] == ["smart", "tenant", "2"]

    described = runner.invoke(app, ["models", "describe", "smart"])
    assert described.exit_code == 0, described.output
    rows = [line.split() for line in described.output.splitlines()[3:]]
    assert rows == [
        ["smart#0", "down/d1", "eu-west", "1000", "0", "closed", "-", "-"],
        ["smart#1", "spare/s1", "eu-west", "1", "2", "closed", "-", "-"],
    ]

    tested = runner.invoke(app, ["models", "test", "smart"])
    assert tested.exit_code == 0, tested.output
    out = tested.output
    assert "answered by smart#1 (spare/s1, region eu-west)" in out
    assert "latency" in out and " ms" in out
    assert "failover smart#0 failed: upstream returned 503" in out

    unknown = runner.invoke(app, ["models", "describe", "smrt"])
    assert unknown.exit_code == 1
    assert "known aliases: default, smart" in unknown.output
