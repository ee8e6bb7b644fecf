"""The CLI's help and shell completion, as a new user meets them."""

from __future__ import annotations

import re

import pytest
import typer.testing
from typer.testing import CliRunner

from corral.cli import app, command
from corral.cli._permissions import iter_commands

runner = CliRunner()


@pytest.fixture(autouse=True)
def _as_main_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invoke the command `main()` runs (readable placeholders included), not the bare app."""
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: command())


def test_help_shows_readable_placeholders_not_python_types() -> None:
    cli = command()
    for path, _command in iter_commands(cli):
        result = runner.invoke(
            app, [*path.split(), "--help"], prog_name="corral", terminal_width=200
        )
        assert result.exit_code == 0, (path, result.output)
        types = re.findall(
            r"<(?:str|bool|int|float|list|Path|int range|float range)[^>]*>", result.output
        )
        assert not types, (path, types)
    limit = runner.invoke(app, ["get", "--help"], terminal_width=200).output
    assert re.search(r"--limit\s+N\b", limit)
    assert re.search(r"--file\s+-f\s+PATH\b", runner.invoke(app, ["apply", "--help"]).output)


def test_shell_completion_is_offered() -> None:
    top = runner.invoke(app, ["--help"], prog_name="corral", terminal_width=200).output
    assert "--install-completion" in top and "--show-completion" in top
    # What the installed script asks at a TAB (the script itself depends on detecting the
    # caller's shell, which a test runner may not have).
    env = {"_CORRAL_COMPLETE": "complete_bash", "COMP_WORDS": "corral ge", "COMP_CWORD": "1"}
    offered = runner.invoke(app, [], prog_name="corral", env=env)
    assert offered.exit_code == 0, offered.output
    assert "get" in offered.output.split()
    assert "run" not in offered.output.split()


def test_apply_help_names_every_contract_kind() -> None:
    text = runner.invoke(app, ["apply", "--help"], terminal_width=200).output
    for kind in ("Agent", "Tool", "Policy", "McpServer"):
        assert kind in text
