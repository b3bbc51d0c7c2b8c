"""`karma generate` and `karma judge` against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def karma(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "karma.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_generate_prints_the_servers_response(simulated_server) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server()
    result = karma("generate", "--backend", "openai", "--base-url", url, "--model", "gpt-4", "--json", "Why?")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["backend"] == "openai" and printed["simulated"] is True  # the server says so
    assert printed["text"].startswith("[simulated gpt-4]") and printed["num_tokens"] > 0
    plain = karma("generate", "--backend", "openai", "--base-url", url, "--model", "gpt-4", "Why?")
    assert plain.returncode == 0 and plain.stdout.strip().startswith("[simulated gpt-4]")


@pytest.mark.parametrize(("flags", "consistent"), [((), True), (("--first-always-wins",), False)])
def test_judge_prints_the_resolved_verdict_with_both_raw_verdicts(
    simulated_server, flags: tuple[str, ...], consistent: bool
) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server(*flags)
    strong = "[simulated gpt-4] " + "a careful complete answer with reasons " * 5
    weak = "[simulated pythia-12b] no."
    args = ("--backend", "openai", "--base-url", url, "--model", "judge-x", "--prompt", "Why?")
    result = karma("judge", *args, "--a", weak, "--b", strong, "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["consistent"] is consistent and printed["judge"] == "judge-x"
    assert printed["winner"] == ("B" if consistent else "TIE")
    # Both passes, as the judge gave them: A first, then B first (so its "A" is our B).
    assert printed["verdict_ab"]["winner"] == ("B" if consistent else "A")
    assert printed["verdict_ba"]["winner"] == "A"
    assert json.loads(printed["verdict_ab"]["raw"])["winner"] == printed["verdict_ab"]["winner"]
    assert 0.0 <= printed["verdict_ab"]["p_first"] <= 1.0  # log-probabilities were served
    text = karma("judge", *args, "--a", weak, "--b", strong)
    assert text.returncode == 0 and "A shown first" in text.stdout and "B shown first" in text.stdout


def test_a_server_error_or_a_bad_option_is_a_one_line_error(simulated_server) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server("--fail-when", "always")
    failed = karma("generate", "--backend", "openai", "--base-url", url, "--model", "m", "always fails")
    assert failed.returncode == 1
    assert "answered HTTP 500" in failed.stdout + failed.stderr
    missing = karma("generate", "--backend", "openai", "--model", "m", "hi")
    assert missing.returncode == 2 and "needs base_url" in missing.stdout + missing.stderr
    malformed = simulated_server("--malformed-always")
    judged = karma(
        "judge",
        "--backend",
        "openai",
        "--base-url",
        malformed,
        "--model",
        "j",
        "--prompt",
        "q",
        "--a",
        "x",
        "--b",
        "y",
    )
    assert judged.returncode == 1 and "no valid verdict in 3 attempt(s)" in judged.stdout + judged.stderr


def test_judge_with_the_verifier_checks_both_answers_against_the_reference() -> None:
    args = ("judge", "--backend", "verifier", "--model", "checker", "--prompt", "12+30", "--json")
    right_b = karma(*args, "--a", "41", "--b", "42", "--reference", "42", "--scorer", "numeric")
    assert right_b.returncode == 0, right_b.stderr
    assert json.loads(right_b.stdout)["winner"] == "B"
    both_wrong = karma(*args, "--a", "41", "--b", "40", "--reference", "42")
    assert json.loads(both_wrong.stdout)["winner"] == "TIE"
    no_reference = karma(*args, "--a", "41", "--b", "42")
    assert no_reference.returncode == 1
    assert "has no reference" in no_reference.stdout + no_reference.stderr
