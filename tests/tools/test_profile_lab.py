"""`karma profile` through the transformers backend on real models: the quick lab (six small
Llama models trained here on checkable skills, tests/conftest.py `lab_quick`). The recipes say
which model was trained on which skill; over the skills one model trained on and another of the
same size never saw, the first must come out ahead. Skill by skill the quick models are too weak
to order (2% against 0% on `add` is one answer of 50, a guess), so the order is checked on the
mean over those skills, where it is not a coin toss."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from karma.agents.kinship import load_profiles
from karma.cli import app


def read_scores(path: Path) -> dict[str, dict[str, float]]:
    return {row.pop("model"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(path.open())}


def trained_against_untrained(recipes: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(trained, untrained) -> the skills the first trained on and the second never saw, for
    models of the same size: where the recipes fix the order, whatever the seed."""
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a in recipes:
        for b in recipes:
            if a["name"] == b["name"] or a["size"] != b["size"]:
                continue
            for skill, steps in a["steps"].items():
                if steps > 0 and b["steps"].get(skill, 0) == 0:
                    pairs[(a["name"], b["name"])].append(skill)
    return dict(pairs)


def test_profile_on_the_quick_lab_ranks_who_trained_on_a_skill_above_who_did_not(  # type: ignore[no-untyped-def]
    lab_quick, tmp_path: Path
) -> None:
    lab = Path(lab_quick.out)
    recipes = json.loads((lab / "recipes.json").read_text())["recipes"]
    out = tmp_path / "profiles.csv"
    result = CliRunner().invoke(
        app,
        [
            "profile",
            str(lab / "prompts" / "heldout.jsonl"),
            "--config",
            str(lab / "pool.yaml"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output  # every prompt answered by every model
    scores = read_scores(out)
    assert list(scores) == [r["name"] for r in recipes]
    skills = sorted({s for r in recipes for s in r["steps"]})
    assert sorted(next(iter(scores.values()))) == skills
    counts = read_scores(out.with_name("profiles.counts.csv"))
    assert all(n > 0 for row in counts.values() for n in row.values())

    pairs = trained_against_untrained(recipes)
    assert pairs, "the recipes hold no trained/untrained pair of one size: nothing to check"
    for (trained, untrained), on in pairs.items():
        mean_trained = sum(scores[trained][s] for s in on) / len(on)
        mean_untrained = sum(scores[untrained][s] for s in on) / len(on)
        assert mean_trained > mean_untrained, (trained, untrained, on, scores)

    # The lab measured the same greedy models on the same prompts its own way (its runner, its
    # batches): the two measurements agree to within two answers of 50 in every cell.
    lab_scores = read_scores(lab / "profiles.csv")
    differences = {(m, s): abs(scores[m][s] - lab_scores[m][s]) for m in scores for s in skills}
    assert max(differences.values()) <= 0.04 + 1e-9, differences

    # The table is what the kin rule reads: the two specialists' profiles point different ways.
    profiles = load_profiles(out)
    assert set(profiles.vectors) == set(scores)
    assert profiles.similarity("lab-arith", "lab-strings") < profiles.similarity(
        "lab-generalist-l", "lab-generalist-l2"
    )
