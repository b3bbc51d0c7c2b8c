"""The lab's task suite: skills whose answers a program checks, generated from a seed.

Each skill draws questions from its own seeded random stream and knows its answer. Questions are
short strings over a small alphabet (digits, lowercase letters, `+ - *` and a space) because the
models read characters; the model is asked "<question>=" and writes the answer. A question
belongs to the training set or to the held-out set by a hash of its text, so no held-out question
is ever trained on, whatever the seed or the number drawn.

A prompt is a JSON line as `karma submit` reads it (schemas/models.py Prompt): prompt_id, text,
metadata {skill, reference, scorer}, with the scorer names of agents/scoring.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from karma.agents.scoring import REFERENCE_KEY, SCORER_KEY, SKILL_KEY

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")
HELDOUT_PERCENT = 20  # of the question space; by hash, so the same question always lands the same side
LETTERS = string.ascii_lowercase
# Always the letter a, among b and c: counting one letter is learnt in the steps a CPU affords;
# matching a letter named in the question as well was not (33% after 900 steps, 2 layers of 128).
COUNT_LETTERS = "abc"


@dataclass(frozen=True)
class Example:
    skill: str
    question: str
    answer: str


@dataclass(frozen=True)
class Skill:
    name: str
    scorer: str  # a scorer of agents/scoring.py: numeric for numbers, exact for strings
    draw: Callable[[random.Random], tuple[str, str]]  # (question, answer)
    description: str


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}", str(a + b)


def _sub(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(0, 99)
    b = rng.randint(0, a)
    return f"{a}-{b}", str(a - b)


def _mul(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(2, 5)
    return f"{a}*{b}", str(a * b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
    return f"rev {word}", word[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(3, 6)))
    return f"sort {digits}", "".join(sorted(digits))


def _count(rng: random.Random) -> tuple[str, str]:
    text = "".join(rng.choice(COUNT_LETTERS) for _ in range(rng.randint(3, 7)))
    return f"count a {text}", str(text.count("a"))


SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill("add", "numeric", _add, "two numbers below 100 added"),
        Skill("sub", "numeric", _sub, "a number below 100 minus one no larger"),
        Skill("mul", "numeric", _mul, "a number below 100 times 2 to 5"),
        Skill("reverse", "exact", _reverse, "a word of 3-6 random lowercase letters, backwards"),
        Skill("sort", "exact", _sort, "3-6 digits in ascending order"),
        Skill("count", "numeric", _count, "how many a's there are in 3-7 letters of a, b and c"),
    )
}
ARITHMETIC = ("add", "sub", "mul", "count")  # what the arithmetic specialist is trained on
STRINGS = ("reverse", "sort")


def split_of(question: str) -> Split:
    """Held out or trained on: a hash of the question alone, the same on every machine."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def skill_seed(seed: int, skill: str, stream: str) -> int:
    """A seed per (build seed, skill, stream): skills and streams never share random numbers."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{skill}:{stream}".encode()).digest()[:8], "big")


def examples(skill: str, split: Split, seed: int, stream: str = "data") -> Iterator[Example]:
    """An endless deterministic stream of `skill`'s questions of one split (repeats possible)."""
    rng = random.Random(skill_seed(seed, skill, stream))
    draw = SKILLS[skill].draw
    while True:
        question, answer = draw(rng)
        if split_of(question) == split:
            yield Example(skill, question, answer)


def distinct(skill: str, split: Split, seed: int, count: int) -> list[Example]:
    """`count` different questions of `skill` from `split`, in a deterministic order."""
    seen: dict[str, Example] = {}
    stream = examples(skill, split, seed, stream=f"set-{split}")
    for _ in range(count * 200):  # the question spaces are far larger than any count asked for
        example = next(stream)
        seen.setdefault(example.question, example)
        if len(seen) == count:
            return list(seen.values())
    raise ValueError(f"skill {skill!r}: fewer than {count} distinct {split} questions")


def prompt_id(skill: str, split: Split, index: int) -> str:
    return f"lab-{skill}-{split}-{index + 1:04d}"


def prompt_record(example: Example, split: Split, index: int) -> dict[str, object]:
    """The JSON object `karma submit` reads for one question."""
    return {
        "prompt_id": prompt_id(example.skill, split, index),
        "text": example.question,
        "metadata": {
            SKILL_KEY: example.skill,
            REFERENCE_KEY: example.answer,
            SCORER_KEY: SKILLS[example.skill].scorer,
        },
    }


def prompt_lines(examples_: list[Example], split: Split) -> str:
    return "".join(json.dumps(prompt_record(e, split, i)) + "\n" for i, e in enumerate(examples_))


def check_skill_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skill(s) {', '.join(unknown)}: the skills are {', '.join(SKILLS)}")
