"""`karma profile` end to end: a pool of simulated models in-process, and the same pool behind a
real HTTP server (`karma simulated-server`, a process) through the openai backend. Simulated
models never answer right, so the benchmark's scorer (`right_model`, below) calls an answer right
when it comes from the model its reference names: every accuracy is then known exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from karma.agents.kinship import load_profiles
from karma.cli import app

SCORER = f"{__name__}:right_model"
THIRDS = (0.0, 1 / 3, 2 / 3)


def right_model(answer: str, reference: str) -> float:
    """Right when the (simulated) answer is the referenced model's own."""
    return float(answer.startswith(f"[simulated {reference}]"))


# (text, reference, skill): alpha is right on 2 of 3 `first` prompts, beta on 1; gamma on 2 of 3
# `second` prompts, the one it would get wrong aside ("boom", which the fault options fail).
BENCHMARK = [
    ("q1 who answers?", "alpha", "first"),
    ("q2 who answers?", "alpha", "first"),
    ("q3 who answers?", "beta", "first"),
    ("q4 boom", "gamma", "second"),
    ("q5 who answers?", "gamma", "second"),
    ("q6 who answers?", "gamma", "second"),
]
EXPECTED = {
    "alpha": {"first": 2 / 3, "second": 0.0},
    "beta": {"first": 1 / 3, "second": 0.0},
    "gamma": {"first": 0.0, "second": 2 / 3},
}


def write_benchmark(path: Path) -> Path:
    path.write_text(
        "".join(
            json.dumps({"text": text, "metadata": {"reference": ref, "skill": skill}}) + "\n"
            for text, ref, skill in BENCHMARK
        )
    )
    return path


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    return {row.pop("model"): row for row in csv.DictReader(path.open())}


def check_tables(out: Path) -> None:
    scores = read_csv(out)
    assert list(scores) == ["alpha", "beta", "gamma"]  # the pool's order
    assert {m: {s: float(v) for s, v in row.items()} for m, row in scores.items()} == EXPECTED
    counts = read_csv(out.with_name("profiles.counts.csv"))
    assert counts == {m: {"first": "3", "second": "3"} for m in EXPECTED}
    # What `karma kin --profiles` will read: alpha and gamma are opposite, beta between.
    profiles = load_profiles(out)
    assert profiles.vectors["alpha"] == (1.0, 0.0) and profiles.vectors["gamma"] == (0.0, 1.0)
    assert profiles.vectors["beta"] == (0.5, 0.0)


def test_profile_measures_a_simulated_pool_in_batches_and_counts_a_crash_as_wrong(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    # gamma's backend raises on "boom" (a backend bug): its whole batch of two (q3, q4) fails.
    config.write_text(
        "pool:\n"
        "  - {name: alpha, latent_quality: 0.5}\n"
        "  - {name: beta, latent_quality: 0.5}\n"
        "  - {name: gamma, latent_quality: 0.5, simulated_crash_on: boom}\n"
    )
    out = tmp_path / "out" / "profiles.csv"
    bench = write_benchmark(tmp_path / "bench.jsonl")
    args = ["profile", str(bench), "--config", str(config), "--out", str(out), "--scorer", SCORER]
    result = CliRunner().invoke(app, [*args, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    check_tables(out)
    assert "n=3" in result.output and "0.667" in result.output and "0.333" in result.output
    assert "gamma: 2 prompt(s) failed (2 exception), counted as wrong" in result.output
    assert "simulated crash of gamma" in result.output
    assert result.output.count("prompt(s) failed") == 1  # alpha and beta answered everything
    assert f"wrote {out}" in result.output

    kin = CliRunner().invoke(app, ["kin", "--profiles", str(out), "--json"])
    assert kin.exit_code == 0, kin.output
    assert json.loads(kin.stdout)["superiority"] == {"alpha": 0.5, "beta": 0.25, "gamma": 0.5}


def test_profile_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"text": "q", "metadata": {"reference": "a", "skill": "s"}}) + "\n{oops\n")
    out = tmp_path / "profiles.csv"
    result = CliRunner().invoke(app, ["profile", str(bench), "--out", str(out)])
    assert result.exit_code == 2
    assert f"{bench}:2: not valid JSON" in result.output
    assert not out.exists()
    two = CliRunner().invoke(app, ["profile", str(bench), str(bench)])
    assert two.exit_code == 2 and "one benchmark JSONL, got 2 paths" in two.output
    stray = CliRunner().invoke(app, ["profile", str(bench), "--metric", "acc"])
    assert stray.exit_code == 2 and "go with --from-lm-eval" in stray.output


def test_profile_through_the_openai_backend_against_a_server_process(
    tmp_path: Path, simulated_server
) -> None:  # type: ignore[no-untyped-def]
    url = simulated_server("--fail-when", "boom")  # HTTP 500 on q4, for every model
    config = tmp_path / "pool.yaml"
    config.write_text(
        "pool:\n"
        + "".join(
            f"  - {{name: {m}, backend: openai, base_url: '{url}', max_retries: 0}}\n"
            for m in ("alpha", "beta", "gamma")
        )
    )
    out = tmp_path / "profiles.csv"
    bench = write_benchmark(tmp_path / "bench.jsonl")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "karma.cli",
            "profile",
            str(bench),
            "--config",
            str(config),
            "--out",
            str(out),
            "--scorer",
            SCORER,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],  # where `tests.tools...` (the scorer) imports from
    )
    assert done.returncode == 0, done.stderr
    check_tables(out)
    for model in ("alpha", "beta", "gamma"):
        assert f"{model}: 1 prompt(s) failed (1 backend), counted as wrong" in done.stderr
    assert "HTTP 500" in done.stderr
