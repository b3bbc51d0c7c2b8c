"""Library log lines stay out of the CLI's own output: they go to the log file, and to stderr
only with the global --loglevel. A real `karma` process, pointed at a closed port, where
aiokafka logs `Unable connect to ...` at ERROR before the CLI reports the failure itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_ports

LIBRARY_LINE = "aiokafka: Unable connect to"


def _karma(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _tail_closed_port(cwd: Path, *global_options: str) -> subprocess.CompletedProcess[str]:
    (closed,) = free_ports(1)
    return _karma(cwd, *global_options, "tail", "prompts", "--bootstrap", f"127.0.0.1:{closed}")


def test_library_log_lines_go_to_the_log_file_not_the_terminal(tmp_path: Path) -> None:
    result = _tail_closed_port(tmp_path)
    assert result.returncode == 1
    # The CLI's own one-line error, and nothing else: no library line in between.
    assert result.stderr.splitlines() and all(
        line.startswith("error: nothing listens on 127.0.0.1:") for line in result.stderr.splitlines()
    ), result.stderr
    assert "Unable connect" not in result.stdout + result.stderr
    log = (tmp_path / "karma-out" / "karma.log").read_text()
    assert f"ERROR {LIBRARY_LINE}" in log


def test_loglevel_shows_library_lines_on_stderr(tmp_path: Path) -> None:
    result = _tail_closed_port(tmp_path, "--loglevel", "warning", "--log-file", "elsewhere.log")
    assert result.returncode == 1
    assert LIBRARY_LINE in result.stderr and "error: nothing listens on" in result.stderr
    assert LIBRARY_LINE not in result.stdout
    assert LIBRARY_LINE in (tmp_path / "elsewhere.log").read_text()
    assert not (tmp_path / "karma-out").exists()


def test_a_run_that_logs_nothing_creates_no_log_file(tmp_path: Path) -> None:
    result = _karma(tmp_path, "kin", "--json")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "karma-out").exists()
