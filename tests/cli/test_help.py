"""Every `karma ... --help` page opens, and none shows a secret: the passwords live in environment
variables (KARMA_KAFKA_PASSWORD, KARMA_KAFKA_PASSWORD_<ROLE>) and no option takes one, so no help
page can print one, even with them set in the shell that asks."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from karma.cli import app
from karma.streams.acls import ROLES
from karma.streams.config import KAFKA_PASSWORD_VARIABLE, password_variable

SECRET = "s3cret-that-must-never-print"


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand under `command`, as the words that name it. (typer carries
    its own copy of click, so a group is known by what it does, not by click's class.)"""
    paths = [path]
    if hasattr(command, "list_commands"):
        context = typer.Context(command)
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            assert sub is not None, f"karma {' '.join((*path, name))} is listed but not found"
            paths += _command_paths(sub, (*path, name))
    return paths


PATHS = _command_paths(typer.main.get_command(app))


def test_the_walk_finds_the_commands_and_their_subcommands() -> None:
    assert {("worker",), ("broker", "start"), ("acl",), ("submit",)} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "karma")
def test_no_help_page_shows_a_password(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KAFKA_PASSWORD_VARIABLE, SECRET)
    for role in ROLES:
        monkeypatch.setenv(password_variable(role), f"{SECRET}-{role}")
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert SECRET not in result.output
