"""The lab's pool: one recipe per model, a size and the steps it trains on each skill.

The recipes make the models differ in level (how long and how big) and in shape (which skills):
an arithmetic specialist and a string specialist of the same size and budget, two strong
generalists close enough to be kin, a medium one and weak ones. The quick pool (for the test
suite) keeps the shapes with a fraction of the steps; its arithmetic and string specialists are
the pair whose ordering the tests rely on (each better on its own skills than the other).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from karma.lab.skills import ARITHMETIC, SKILLS, STRINGS
from karma.lab.train import Hyper, Size


@dataclass(frozen=True)
class Recipe:
    name: str
    size: Size
    steps: Mapping[str, int]  # skill -> steps (batches' worth of that skill's examples)
    description: str
    seed_offset: int = 0  # models of the same recipe shape still start from different weights
    hyper: Hyper = field(default_factory=Hyper)

    @property
    def total_steps(self) -> int:
        return sum(self.steps.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": asdict(self.size),
            "steps": dict(self.steps),
            "total_steps": self.total_steps,
            "description": self.description,
            "seed_offset": self.seed_offset,
            "hyper": asdict(self.hyper),
        }


def _each(skills: tuple[str, ...], steps: int) -> dict[str, int]:
    return {skill: steps if skill in skills else 0 for skill in SKILLS}


ALL = tuple(SKILLS)


def full_pool() -> list[Recipe]:
    return [
        Recipe("lab-generalist-l", Size(128, 3), _each(ALL, 450), "strong generalist: every skill, longest"),
        Recipe(
            "lab-generalist-l2",
            Size(128, 3),
            _each(ALL, 400),
            "strong generalist, a little shorter, other weights: the strong one's kin",
            seed_offset=1,
        ),
        Recipe("lab-generalist-m", Size(96, 2), _each(ALL, 150), "medium generalist: every skill, shorter"),
        Recipe(
            "lab-arith",
            Size(128, 3),
            {**_each(ARITHMETIC, 400), **_each(STRINGS, 0)} | {"reverse": 15, "sort": 15},
            "arithmetic specialist: add, sub, mul, count; a glimpse of the string skills",
        ),
        Recipe(
            "lab-strings",
            Size(128, 3),
            {**_each(STRINGS, 400)} | {"add": 15, "sub": 15, "mul": 15, "count": 15},
            "string specialist: reverse and sort; a glimpse of arithmetic",
        ),
        Recipe("lab-weak", Size(64, 2), _each(ALL, 40), "weak generalist: every skill, briefly"),
        Recipe("lab-tiny", Size(32, 1, heads=2), _each(ALL, 15), "weakest: one small layer, a few steps"),
    ]


def quick_pool() -> list[Recipe]:
    """Six models in a couple of minutes: the shapes of the full pool, a fraction of the steps."""
    return [
        Recipe("lab-generalist-l", Size(96, 2), _each(ALL, 60), "generalist: every skill"),
        Recipe("lab-generalist-l2", Size(96, 2), _each(ALL, 55), "generalist, other weights", seed_offset=1),
        Recipe("lab-generalist-m", Size(64, 2), _each(ALL, 30), "medium generalist"),
        Recipe(
            "lab-arith",
            Size(96, 2),
            _each(ARITHMETIC, 80) | {"reverse": 0, "sort": 0},
            "arithmetic specialist (never saw reverse or sort)",
        ),
        Recipe(
            "lab-strings",
            Size(96, 2),
            _each(STRINGS, 120) | {"add": 0, "sub": 0, "mul": 0, "count": 0},
            "string specialist (never saw arithmetic)",
        ),
        Recipe("lab-tiny", Size(32, 1, heads=2), _each(ALL, 5), "weakest: one small layer, a few steps"),
    ]


def recipes(quick: bool) -> list[Recipe]:
    return quick_pool() if quick else full_pool()
