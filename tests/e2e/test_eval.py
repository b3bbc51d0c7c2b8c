"""`karma eval` for real: one pipeline per policy on the session broker, and a report whose
numbers agree with a recount of the preferences each pipeline left on its topics."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from karma.agents.kinship import load_profiles
from karma.schemas.models import KinPair, Preference, Winner
from karma.streams.client import read_topic
from karma.streams.config import KarmaSettings

PROMPTS = 8
MODELS = 5  # the default configured pool
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def karma_eval(
    bootstrap: str, out: Path, *args: str, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "karma.cli",
            "eval",
            "--bootstrap",
            bootstrap,
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_records(bootstrap: str, prefix: str, stage: str) -> list[Any]:
    settings = KarmaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)

    async def _read() -> list[Any]:
        return [r.record async for r in read_topic(settings, stage, until_end=True)]

    return asyncio.run(_read())


def test_eval_reports_what_each_policy_produced(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    done = karma_eval(
        kafka_bootstrap, out, "--pool", "config", "--limit", str(PROMPTS), "--policies", "kin,sup,all"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "report:" in done.stdout
    for name in ("report.md", "report.json"):
        assert (out / name).stat().st_size > 500
    for name in ("gap_distribution.png", "quality.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)

    report = json.loads((out / "report.json").read_text())
    assert [p["policy"] for p in report["policies"]] == ["kin", "sup", "all"]
    assert report["run"]["prompts"] == PROMPTS and len(report["run"]["pool"]) == MODELS
    superiority = load_profiles(None).superiority  # the configured pool has no latent_quality set
    md = (out / "report.md").read_text()

    for summary in report["policies"]:
        policy, prefix = summary["policy"], summary["topic_prefix"]
        prefs: list[Preference] = read_records(kafka_bootstrap, prefix, "preferences")
        pairs: list[KinPair] = read_records(kafka_bootstrap, prefix, "pairs")
        # Drained: every pair judged, nothing invented, no id twice (no crash, so no replay).
        assert sorted(p.preference_id for p in prefs) == sorted(p.pair_id for p in pairs)
        assert len({p.preference_id for p in prefs}) == len(prefs)
        assert len(read_records(kafka_bootstrap, prefix, "responses")) == PROMPTS * MODELS
        assert all(p.policy == policy for p in prefs)

        n = len(prefs)
        per_prompt = Counter(p.prompt_id for p in prefs)
        gaps = sorted(p.gap for p in prefs)
        labels = [p for p in prefs if p.winner is not Winner.TIE]
        decided = [
            p
            for p in labels
            if superiority(p.response_a.model) != superiority(p.response_b.model)  # type: ignore[union-attr]
        ]
        right = [
            p
            for p in decided
            if superiority(p.chosen.model) > superiority(p.rejected.model)  # type: ignore[union-attr]
        ]
        assert summary["pairs"] == n
        assert summary["pairs_per_prompt"] == pytest.approx(n / PROMPTS)
        assert summary["prompts_with_pairs"] == pytest.approx(len(per_prompt) / PROMPTS)
        assert summary["labelled_per_prompt"] == pytest.approx(len(labels) / PROMPTS)
        assert summary["tie_rate"] == pytest.approx(1 - len(labels) / n)
        assert 0.0 <= summary["tie_rate"] <= 1.0
        assert summary["position_consistency"] == pytest.approx(sum(p.consistent for p in prefs) / n)
        assert summary["gap_mean"] == pytest.approx(statistics.fmean(gaps))
        assert summary["gap_median"] == pytest.approx(statistics.median(gaps))
        assert all(g >= 0 for g in gaps) and summary["gap_p10"] <= summary["gap_median"] <= summary["gap_p90"]
        assert sum(summary["gap_histogram"]["counts"]) == n
        assert summary["label_accuracy_n"] == len(decided)
        assert summary["label_accuracy"] == (pytest.approx(len(right) / len(decided)) if decided else None)
        assert summary["dlq"] == 0
        assert f"| {policy} | {summary['pairs_per_prompt']:.2f} |" in md

        if policy == "all":  # every pair of the 5 models: k(k-1)/2
            assert set(per_prompt.values()) == {MODELS * (MODELS - 1) // 2} and len(per_prompt) == PROMPTS
        if policy == "sup":  # top-1 against top-2, once per prompt
            assert set(per_prompt.values()) == {1} and len(per_prompt) == PROMPTS
        if policy == "kin":  # kin pairs never exceed the gap threshold, whatever competency learnt
            assert all(g <= KarmaSettings().kin.delta + 1e-9 for g in gaps)


def test_a_policy_that_does_not_drain_fails_naming_it_and_the_log(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    done = karma_eval(
        kafka_bootstrap, out, "--pool", "config", "--limit", "2", "--policies", "random", "--timeout", "0.5"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())  # rich may wrap the line
    assert "policy random: not drained after 0.5 s" in message
    assert "worker-random.log" in message
    assert not (out / "report.json").exists()


def test_eval_scores_the_judge_and_zebra_against_the_checked_truth(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Prompts with references: the report's checked accuracy of the judge and of zebra, per
    policy, agrees with a recount from the preferences on the topics. The reference names a model
    and the scorer (tests/e2e/verifier_scorers.py, as `judge.scorer`) marks its answers right."""
    from tests.e2e.verifier_scorers import NAME

    references = ["wizardlm-13b", "llama-2-13b-chat", "vicuna-33b", "gpt-3.5-turbo"]
    prompts = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt_id": f"chk-{i}", "text": f"Who wrote answer {i}?", "metadata": {"reference": r}}
        for i, r in enumerate(references)
    ]
    lines.append({"prompt_id": "chk-none", "text": "No reference here.", "metadata": {}})
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "eval"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "karma.cli",
            "eval",
            "--bootstrap",
            kafka_bootstrap,
            "--out",
            str(out),
            "--pool",
            "config",
            "--prompts",
            str(prompts),
            "--policies",
            "kin,maxgap",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        env={**os.environ, "KARMA_JUDGE__SCORER": NAME},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    reference_of = {line["prompt_id"]: line["metadata"].get("reference") for line in lines}
    for summary in report["policies"]:
        prefs: list[Preference] = read_records(kafka_bootstrap, summary["topic_prefix"], "preferences")
        truth = {}  # preference id -> the model whose answer is right, where exactly one is
        for p in prefs:
            right = [c.model for c in (p.response_a, p.response_b) if c.model == reference_of[p.prompt_id]]
            if len(right) == 1:
                truth[p.preference_id] = right[0]
        judged = [p for p in prefs if p.preference_id in truth and p.chosen is not None]
        zebra = [
            (p, p.response_a if p.response_a.superiority > p.response_b.superiority else p.response_b)
            for p in prefs
            if p.preference_id in truth and p.response_a.superiority != p.response_b.superiority
        ]
        assert summary["checked_pairs"] == len(truth)
        assert summary["checked_accuracy_n"] == len(judged)
        expected = sum(p.chosen.model == truth[p.preference_id] for p in judged)  # type: ignore[union-attr]
        assert summary["checked_accuracy"] == (pytest.approx(expected / len(judged)) if judged else None)
        assert summary["zebra_checked_accuracy_n"] == len(zebra)
        zebra_right = sum(chosen.model == truth[p.preference_id] for p, chosen in zebra)
        assert summary["zebra_checked_accuracy"] == (
            pytest.approx(zebra_right / len(zebra)) if zebra else None
        )
    # maxgap pairs the best answer with a worse one: some pair of it has exactly one right answer.
    assert any(s["checked_pairs"] > 0 for s in report["policies"])
    assert any(s["checked_accuracy_n"] > 0 for s in report["policies"])
    assert any(s["zebra_checked_accuracy_n"] > 0 for s in report["policies"])
    assert "| checked accuracy (n) | zebra checked accuracy (n) |" in (out / "report.md").read_text()
