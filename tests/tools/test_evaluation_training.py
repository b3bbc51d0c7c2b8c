"""`karma eval --train` and `karma loop` without Kafka: the stream never overlaps the set accuracy is
measured on, each arm labels the same pairs its own way, the two budgets train on what they say
(an equal number of preferences, or every preference of the same prompts), every seed is a run,
and the report gives the mean change with its 95% interval. The DPO runs and the measurements are
stand-ins here (tests/tools/train/test_dpo.py trains for real; the full study is in the README)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from karma.lab.build import BuildResult
from karma.schemas.models import Preference, Winner
from karma.tools.evaluation import EvalError
from karma.tools.evaluation.loop import (
    LoopResult,
    Standing,
    chunks,
    nearest_stronger,
    wait_for_switch,
    write_loop,
)
from karma.tools.evaluation.training import (
    StudySettings,
    decided,
    heldout_examples,
    mean_interval,
    run_study,
    stream_prompts,
    study_size,
    write_study,
)
from karma.tools.train.dpo import DpoSettings, RoundResult
from tests import records


def test_the_interval_is_students_t_over_the_seeds() -> None:
    mean, low, high = mean_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    # sd 0.1, n 3: t(0.975, 2) = 4.303, half-width 4.303 * 0.1 / sqrt(3)
    assert (high - mean) == pytest.approx(4.303 * 0.1 / 3**0.5) and (mean - low) == pytest.approx(high - mean)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)


def test_the_stream_is_held_out_and_never_the_set_accuracy_is_measured_on(lab_quick: BuildResult) -> None:
    heldout = heldout_examples(lab_quick.out)
    stream = stream_prompts(lab_quick.out, 30)
    measured = {e.question for examples in heldout.values() for e in examples}
    assert not measured & {p.text for p in stream}
    assert len({p.prompt_id for p in stream}) == len(stream)
    by_skill = {skill: sum(p.metadata["skill"] == skill for p in stream) for skill in heldout}
    assert set(by_skill) == set(heldout) and all(1 <= n <= 30 for n in by_skill.values()), by_skill
    assert all(p.metadata["reference"] for p in stream)
    # A round of the loop has every skill.
    for chunk in chunks(stream, 4):
        assert {p.metadata["skill"] for p in chunk} == set(heldout)


def pref(prompt: str, winner: Winner, superiority_a: float, superiority_b: float, policy: str) -> Preference:
    a = records.candidate("m1", prompt_id=prompt, superiority=superiority_a)
    b = records.candidate("m2", prompt_id=prompt, superiority=superiority_b)
    return records.preference_on(records.kin_pair(prompt, a, b, policy=policy), winner, judge="verifier")


def test_each_arm_labels_the_same_pairs_its_own_way() -> None:
    prefs = [
        pref("p-1", Winner.B, 0.9, 0.2, "kin"),  # the weaker model was right: zebra says A
        pref("p-2", Winner.TIE, 0.9, 0.2, "kin"),  # both wrong: no verifier label, zebra still picks
        pref("p-3", Winner.A, 0.5, 0.5, "kin"),  # equal superiority: zebra calls it a tie
    ]
    assert [p.winner for p in decided(prefs, "verifier")] == [Winner.B, Winner.A]
    assert [(p.prompt_id, p.winner) for p in decided(prefs, "zebra")] == [
        ("p-1", Winner.A),
        ("p-2", Winner.A),
    ]


def test_the_study_trains_every_arm_budget_policy_and_seed_and_reports_the_change(tmp_path: Path) -> None:
    by_policy = {
        "kin": [pref(f"k-{i}", Winner.A, 0.6, 0.5, "kin") for i in range(4)],
        "all": [pref(f"a-{i}", Winner.B, 0.9, 0.1, "all") for i in range(10)],
        "sup": [pref(f"s-{i}", Winner.TIE, 0.9, 0.1, "sup") for i in range(3)],  # nothing to learn (verifier)
    }
    trained: list[dict[str, Any]] = []

    def trainer(parent: Path, rows: list[dict[str, Any]], out: Path, dpo: DpoSettings) -> RoundResult:
        out.mkdir(parents=True)
        (out / "rows").write_text(str(len(rows)))
        trained.append({"rows": len(rows), "seed": dpo.seed, "lr": dpo.learning_rate})
        return RoundResult(0.6, 0.1, 0.7, steps=1, seconds=0.1)

    def measure(model: Path, heldout: Any) -> dict[str, float]:
        # The student gets better by 0.01 per row trained on: what the report must show.
        rows = int((model / "rows").read_text()) if (model / "rows").exists() else 0
        return {"add": 0.2 + 0.01 * rows, "sort": 0.4}

    settings = StudySettings("s", tmp_path / "student", seeds=3, dpo=DpoSettings(learning_rate=1e-4))
    said: list[str] = []
    result = run_study(by_policy, {}, settings, trainer=trainer, measure=measure, say=said.append)
    assert study_size(by_policy, settings) == len(trained) == len(result.runs)
    # verifier: kin and all (sup has only ties), zebra: all three; two budgets; three seeds.
    assert len(trained) == (2 + 3) * 2 * 3
    assert said == ["verifier/sup: no decided preference, not trained"] * 2
    assert {t["lr"] for t in trained} == {1e-4} and {t["seed"] for t in trained} == {0, 1, 2}
    table = {(r["arm"], r["budget"], r["policy"]): r for r in result.table()}
    # Equal preferences: the smallest policy's count (kin's 4) for every policy of the arm.
    assert table[("verifier", "equal_preferences", "all")]["preferences"] == 4
    assert table[("verifier", "equal_prompts", "all")]["preferences"] == 10
    assert table[("zebra", "equal_preferences", "sup")]["preferences"] == 3
    row = table[("verifier", "equal_prompts", "all")]
    assert row["change"] == pytest.approx(0.05) and row["low"] == pytest.approx(
        0.05
    )  # (0.1 on add) / 2 skills
    assert row["per_skill_change"] == {"add": pytest.approx(0.1), "sort": pytest.approx(0.0)}
    paths = write_study(result, tmp_path / "report", pipeline_seconds=12.0)
    document = json.loads(paths["json"].read_text())
    assert document["baseline_mean"] == pytest.approx(statistics.fmean([0.2, 0.4]))
    assert len(document["table"]) == 10 and paths["png"].stat().st_size > 0
    assert "| verifier | equal_prompts | all | 10 | 3 | +0.0500 |" in paths["md"].read_text()


def test_the_loop_waits_for_the_worker_to_serve_the_new_version(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    running, stopped = SimpleNamespace(poll=lambda: None), SimpleNamespace(poll=lambda: 3, returncode=3)
    log.write_text("INFO model lab-m: version 1 -> 21 (/v21)\n")  # version 21 is not version 2
    with pytest.raises(EvalError, match="did not switch lab-m to version 2"):
        wait_for_switch(log, "lab-m", 2, running, timeout_s=0.3)  # type: ignore[arg-type]
    with pytest.raises(EvalError, match="stopped \\(exit 3\\) before serving version 2"):
        wait_for_switch(log, "lab-m", 2, stopped, timeout_s=5)  # type: ignore[arg-type]
    log.write_text(log.read_text() + "INFO model lab-m: version 1 -> 2 (/train/lab-m/v2)\n")
    wait_for_switch(log, "lab-m", 2, running, timeout_s=5)  # type: ignore[arg-type]


def test_the_loop_report_says_how_far_the_student_is_from_the_model_above_it(tmp_path: Path) -> None:
    def standing(number: int, superiority: float, pool: dict[str, float]) -> Standing:
        return Standing(
            round=number,
            version=number + 1,
            accuracy={"add": 0.5},
            mean_accuracy=0.5,
            superiority=superiority,
            online=superiority,
            comparisons=10.0,
            kin=["lab-m"] if number == 0 else [],
            decided=4,
            pool=pool,
        )

    # Round 1: the student's own earlier version stands above it, but a version is not another model.
    first = standing(0, 0.50, {"lab-s": 0.50, "lab-m": 0.62, "lab-l": 0.90, "lab-w": 0.30})
    second = standing(1, 0.48, {"lab-s": 0.50, "lab-s@v2": 0.48, "lab-m": 0.70, "lab-l": 0.90})
    assert nearest_stronger("lab-s", first) == ("lab-m", pytest.approx(0.12))
    assert nearest_stronger("lab-s", second) == ("lab-m", pytest.approx(0.22))
    paths = write_loop(LoopResult("lab-s", [first, second], seconds=12.0), tmp_path)
    table = paths["md"].read_text()
    assert "| 0 | 1 | 0.500 | 0.500 | 10 | lab-m | lab-m (+0.120) | 4 | 0 |" in table
    assert "| 1 | 2 | 0.500 | 0.480 | 10 | - | lab-m (+0.220) | 4 | 0 |" in table
    assert json.loads(paths["json"].read_text())["rounds"][1]["pool"]["lab-s@v2"] == 0.48
    assert paths["png"].stat().st_size > 0
