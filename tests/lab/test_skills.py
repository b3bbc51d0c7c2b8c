"""The lab's skills: deterministic from the seed, right answers (checked here by a computation of
the test's own), train and held-out questions disjoint, prompts in the form `karma submit` reads."""

from __future__ import annotations

import json
import re

import pytest

from karma.agents.scoring import BUILT_IN, score
from karma.lab.skills import SKILLS, distinct, prompt_lines, split_of
from karma.schemas.models import Prompt


def expected_answer(question: str) -> str:
    """The answer worked out from the question's text alone, not by the skill's code."""
    if match := re.fullmatch(r"(\d+)([+*-])(\d+)", question):
        a, op, b = int(match[1]), match[2], int(match[3])
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if match := re.fullmatch(r"rev ([a-z]+)", question):
        return "".join(reversed(match[1]))
    if match := re.fullmatch(r"sort (\d+)", question):
        counts = [match[1].count(d) for d in "0123456789"]
        return "".join(d * n for d, n in zip("0123456789", counts, strict=True))
    if match := re.fullmatch(r"count (a) ([abc]+)", question):
        return str(sum(1 for c in match[2] if c == match[1]))
    raise AssertionError(f"unexpected question {question!r}")


def test_there_are_at_least_six_skills_with_known_scorers() -> None:
    assert len(SKILLS) >= 6
    assert {skill.scorer for skill in SKILLS.values()} <= set(BUILT_IN)


@pytest.mark.parametrize("skill", list(SKILLS))
def test_questions_are_deterministic_and_their_answers_right(skill: str) -> None:
    first = distinct(skill, "heldout", seed=3, count=50)
    assert first == distinct(skill, "heldout", seed=3, count=50)
    assert first != distinct(skill, "heldout", seed=4, count=50)
    for example in first + distinct(skill, "train", seed=3, count=200):
        assert example.answer == expected_answer(example.question), example
    if skill == "sub":
        assert all(int(e.answer) >= 0 for e in first)


@pytest.mark.parametrize("skill", list(SKILLS))
def test_train_and_heldout_are_disjoint(skill: str) -> None:
    train = {e.question for e in distinct(skill, "train", seed=0, count=300)}
    heldout = {e.question for e in distinct(skill, "heldout", seed=0, count=70)}
    assert len(train) == 300 and len(heldout) == 70
    assert not train & heldout
    assert {split_of(q) for q in train} == {"train"} and {split_of(q) for q in heldout} == {"heldout"}


def test_prompts_are_what_karma_submit_reads_and_their_references_score_right() -> None:
    for skill in SKILLS:
        lines = prompt_lines(distinct(skill, "heldout", seed=0, count=5), "heldout").splitlines()
        ids = []
        for line in lines:
            prompt = Prompt.from_json(json.loads(line))
            ids.append(prompt.prompt_id)
            assert prompt.metadata["skill"] == skill
            assert prompt.metadata["scorer"] == SKILLS[skill].scorer
            assert (
                score(prompt.metadata["scorer"], prompt.metadata["reference"], prompt.metadata["reference"])
                == 1.0
            )
            assert score(prompt.metadata["scorer"], "x", prompt.metadata["reference"]) == 0.0
        assert ids == [f"lab-{skill}-heldout-{i:04d}" for i in range(1, 6)]
