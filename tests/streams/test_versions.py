"""The releases the overrides were written against: pinned, checked at a worker's start, and a
worker on another release refused with a message that names it (or warned, when allowed)."""

from __future__ import annotations

import logging
import tomllib

import pytest
from typer.testing import CliRunner

from karma.cli import app
from karma.streams import versions
from karma.streams.versions import WRITTEN_AGAINST, UntestedVersionError, check_versions, untested_versions
from tests.conftest import REPO_ROOT


def test_the_pins_in_pyproject_are_the_releases_written_against() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {f"{package}=={release}" for package, release in WRITTEN_AGAINST.items()} <= set(dependencies)


def test_the_suite_runs_on_those_releases() -> None:
    assert untested_versions() == []


def test_another_release_is_named_with_the_one_written_against() -> None:
    found = {"faust-streaming": "0.16.0", "aiokafka": WRITTEN_AGAINST["aiokafka"]}
    [problem] = untested_versions(found)
    assert problem.startswith("faust-streaming 0.16.0 is installed") and "faust-streaming 0.15.3" in problem
    with pytest.raises(UntestedVersionError, match="allow_untested_versions"):
        check_versions(False, found)


def test_allowed_another_release_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="karma.streams.versions"):
        check_versions(True, {"faust-streaming": WRITTEN_AGAINST["faust-streaming"], "aiokafka": None})
    assert "aiokafka (not installed) is installed" in caplog.text and "starting anyway" in caplog.text


def test_a_worker_on_another_release_stops_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "installed", lambda package: "9.9.9")
    # Nothing listens on this port: the version check comes first, so it is never dialled.
    result = CliRunner().invoke(app, ["worker", "rate", "--bootstrap", "127.0.0.1:1", "--metrics-port", "0"])
    assert result.exit_code == 2
    assert "error: faust-streaming 9.9.9 is installed" in result.output
    assert "aiokafka 9.9.9 is installed" in result.output
