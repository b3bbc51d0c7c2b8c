"""`karma eval` for real: one pipeline per policy on the session broker, and a report whose
numbers agree with a recount of the preferences each pipeline left on its topics."""

from __future__ import annotations

import asyncio
import json
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
