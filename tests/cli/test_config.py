"""A bad configuration stops every command with one line per problem and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from karma.cli import app


@pytest.fixture(autouse=True)
def _no_config_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # load_settings(file) exports KARMA_CONFIG for child workers; undo it after each test.
    monkeypatch.setenv("KARMA_CONFIG", "")
    monkeypatch.delenv("KARMA_CONFIG")


def test_a_misspelt_key_in_a_pool_file_names_file_key_and_the_closest_name(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("pool:\n  - name: m1\n    backnd: openai\n  - name: m2\nkin:\n  tua: 0.5\n")
    result = CliRunner().invoke(app, ["kin", "--json", "--config", str(config)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: config file {config}: pool[0].backnd: unknown key 'backnd'; did you mean 'backend'?",
        f"error: config file {config}: kin.tua: unknown key 'tua'; did you mean 'tau'?",
    ]


def test_a_misspelt_environment_variable_stops_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_KIN__DELTAA", "0.1")
    result = CliRunner().invoke(app, ["kin", "--json"])
    assert result.exit_code == 2
    assert "error: environment variable KARMA_KIN__DELTAA: kin.deltaa: unknown key 'deltaa'; did you " in (
        result.output
    )
    assert "'delta'" in result.output
