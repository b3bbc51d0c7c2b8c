"""Checking an answer against a prompt's reference: scorers by name. Pure: no Kafka, no model.

A scorer takes the model's answer and the reference answer and says whether the answer is right
(1.0) or wrong (0.0); a user's own scorer may return anything in [0, 1]. The verifier judge
(agents/backends/verifier.py) and `karma profile` read them by name:

- `exact`: the answer, stripped of surrounding whitespace, equals the reference (case kept);
- `numeric`: the first number in the answer equals the reference's number (`1,234` and `1234.0`
  are 1234; an answer with no number is wrong);
- `contains`: the reference (case-folded, stripped) occurs in the answer (case-folded);
- `module:function`: a user's own, `function(answer, reference) -> float`, imported once.

A prompt names its reference and scorer in its metadata: `reference` (required for checking),
`scorer` (optional, else the judge's default) and `skill` (what a profile groups by).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from functools import cache

Scorer = Callable[[str, str], float]

REFERENCE_KEY = "reference"
SCORER_KEY = "scorer"
SKILL_KEY = "skill"

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


class ScorerError(ValueError):
    """A scorer name that names no scorer, or a user's scorer that cannot be loaded or misbehaves."""


def exact(answer: str, reference: str) -> float:
    return float(answer.strip() == reference.strip())


def first_number(text: str) -> float | None:
    """The first number written in `text` (thousands separators allowed), or None."""
    found = _NUMBER.search(text)
    return None if found is None else float(found.group().replace(",", ""))


def numeric(answer: str, reference: str) -> float:
    expected = first_number(reference)
    if expected is None:
        raise ScorerError(f"numeric scorer: the reference {reference!r} holds no number")
    got = first_number(answer)
    return float(got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9))


def contains(answer: str, reference: str) -> float:
    return float(reference.strip().casefold() in answer.casefold())


BUILT_IN: Mapping[str, Scorer] = {"exact": exact, "numeric": numeric, "contains": contains}


@cache
def scorer(name: str) -> Scorer:
    """The scorer called `name`: a built-in one, or `module:function`."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        known = ", ".join(BUILT_IN)
        raise ScorerError(f"unknown scorer {name!r}: one of {known}, or module:function for your own")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScorerError(f"scorer {name!r}: cannot import {module_name!r}: {exc}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ScorerError(f"scorer {name!r}: {module_name} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]


def score(name: str, answer: str, reference: str) -> float:
    """`answer` checked against `reference` by the scorer called `name`, in [0, 1]."""
    value = scorer(name)(answer, reference)
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ScorerError(f"scorer {name!r} returned {value!r}, not a number in [0, 1]")
    return float(value)
