"""`karma demo` as a user runs it (a real process, the session's broker): its screen shows only
its own progress and summary, and with the ZEBRA labeller every label follows superiority."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# How a library log record looks on a terminal: Python's last resort prints the bare message,
# a configured handler "LEVEL name: message"; aiokafka's and faust's lines name themselves.
LIBRARY_LINE = re.compile(
    r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b|aiokafka|faust|mode\.|Traceback|Failed fetch"
)


def test_demo_with_the_zebra_labeller(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "karma-out" / "preferences.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARMA_")}
    env["KARMA_JUDGE__BACKEND"] = "zebra"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "karma.cli",
            "demo",
            "--bootstrap",
            kafka_bootstrap,
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    screen = run.stdout + run.stderr
    assert run.returncode == 0, screen
    assert "submitted 50 prompts" in screen and "KARMA demo" in screen
    assert [line for line in screen.splitlines() if LIBRARY_LINE.search(line)] == []

    preferences = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preferences) == 100  # 50 prompts x 2 kin pairs of the default pool
    for preference in preferences:
        a, b = preference["response_a"], preference["response_b"]
        assert preference["judge"] == "zebra" and preference["simulated"]
        assert preference["gap"] == pytest.approx(abs(a["superiority"] - b["superiority"]))
        if a["superiority"] == b["superiority"]:
            assert preference["winner"] == "TIE"
        else:
            chosen, rejected = (a, b) if preference["winner"] == "A" else (b, a)
            assert preference["winner"] in ("A", "B")
            assert chosen["superiority"] > rejected["superiority"]
            assert preference["consistent"]
