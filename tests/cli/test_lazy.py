"""The command line starts light: `karma --help` lists every command from the table in
cli/__init__.py without importing a command's module, and `karma tail` (or any `karma COMMAND
--help`) imports that command's module alone, never faust, the stages or the model backends
(cli/lazy.py). The time it saves is measured, not asserted; what is imported is asserted here,
each in a fresh interpreter, as the `karma` script starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from karma.cli import COMMANDS, app
from karma.cli.lazy import LazyCommand, load

# Never on the path of `karma --help` or `karma tail`: the worker's framework, the stages, the
# model backends (and their SDKs: openai, aiohttp), the tools and the local broker.
NOT_FOR_TAIL = (
    "faust",
    "mode",
    "karma.streams.app",
    "karma.streams.stage",
    "karma.streams.worker",
    "karma.streams.delivery",
    "karma.agents.generation",
    "karma.agents.rating",
    "karma.agents.judging",
    "karma.agents.backends.simulated",
    "karma.agents.backends.openai",
    "karma.agents.backends.vllm",
    "karma.agents.backends.transformers",
    "karma.agents.backends.zebra",
    "karma.agents.backends.sdk",
    "openai",
    "aiohttp",
    "matplotlib",
    "karma.tools",
    "karma.localkafka",
)
# Nor, for the list of commands, what commands need: Kafka's client, numpy, the configuration
# (which reads the backends' names), the records.
NOT_FOR_THE_LIST = (
    "aiokafka",
    "numpy",
    "pydantic",
    "karma.streams.client",
    "karma.streams.config",
    "karma.agents",
    "karma.schemas",
)
# The modules of the command line itself, loaded for every command.
CLI_BASE = {"karma.cli", "karma.cli.lazy", "karma.cli.logging_setup"}

_PROBE = """
import json, sys
sys.argv = ["karma", *json.loads(sys.argv[1])]
import karma.cli
try:
    karma.cli.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(code: str, *args: str) -> tuple[object, set[str]]:
    """The exit code and the modules loaded by `code` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], set(result["modules"])


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of `packages` (each one or its submodules) among `modules`."""
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


def command_modules(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith("karma.cli.")} - CLI_BASE - {"karma.cli.common"}


def test_help_imports_no_command_module() -> None:
    code, modules = imported_by(_PROBE, "--help")
    assert code == 0
    assert loaded(modules, NOT_FOR_TAIL + NOT_FOR_THE_LIST) == []
    assert {m for m in modules if m.startswith("karma.cli")} == CLI_BASE
    # The listing is click's: typer's rich help would load markdown-it, half of the start-up.
    assert loaded(modules, ("typer.rich_utils", "markdown_it")) == []


def test_no_arguments_shows_the_help_as_light() -> None:
    code, modules = imported_by(_PROBE)
    assert code == 2  # no_args_is_help: the help, as a usage error
    assert loaded(modules, NOT_FOR_TAIL + NOT_FOR_THE_LIST) == []


def test_tail_help_imports_tail_alone_and_no_stage_or_backend() -> None:
    code, modules = imported_by(_PROBE, "tail", "--help")
    assert code == 0
    assert command_modules(modules) == {"karma.cli.tail"}
    assert loaded(modules, NOT_FOR_TAIL) == []


def test_tail_module_imports_no_stage_or_backend() -> None:
    _, modules = imported_by(
        "import json, sys, karma.cli.tail\nprint(json.dumps({'code': 0, 'modules': sorted(sys.modules)}))"
    )
    assert command_modules(modules) == {"karma.cli.tail"}
    assert loaded(modules, NOT_FOR_TAIL) == []


@pytest.mark.parametrize("name", ["broker", "schemas"])
def test_a_command_help_imports_that_command_module_only(name: str) -> None:
    entry = next(entry for entry in COMMANDS if entry.name == name)
    code, modules = imported_by(_PROBE, name, "--help")
    assert code == 0
    assert command_modules(modules) == {entry.target.partition(":")[0]}


def normalized(text: str) -> str:
    """Help text without rich's box drawing and line wrapping (click's breaks after a hyphen)."""
    return re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split()))


def test_help_lists_every_command_with_its_help_in_the_table_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    listed = normalized(result.output)
    at = [listed.find(f" {entry.name} {normalized(entry.help)}") for entry in COMMANDS]
    missing = [entry.name for entry, where in zip(COMMANDS, at, strict=True) if where < 0]
    assert not missing, listed
    assert at == sorted(at)


def test_the_table_help_is_each_command_own_first_paragraph() -> None:
    assert len({entry.name for entry in COMMANDS}) == len(COMMANDS)
    for entry in COMMANDS:
        command = load(entry)
        assert command.name == entry.name
        first_paragraph = (command.help or "").split("\n\n")[0]
        assert normalized(entry.help) == normalized(first_paragraph), entry.name


@pytest.mark.parametrize("entry", COMMANDS, ids=[entry.name for entry in COMMANDS])
def test_every_command_has_its_help(entry: LazyCommand) -> None:
    result = CliRunner().invoke(app, [entry.name, "--help"], env={"COLUMNS": "200"}, prog_name="karma")
    assert result.exit_code == 0, result.output
    assert f"Usage: karma {entry.name} " in result.output


def test_a_misspelt_command_is_suggested_from_the_table() -> None:
    result = CliRunner().invoke(app, ["tial"])
    assert result.exit_code == 2
    assert "No such command 'tial'" in result.output and "'tail'" in result.output


def test_broker_subcommands_stay_reachable() -> None:
    result = CliRunner().invoke(app, ["broker", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert {"start", "stop", "status"} <= set(normalized(result.output).split())
