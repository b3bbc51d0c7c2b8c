"""A benchmark set for `karma profile`: a JSONL of prompts in the form `karma submit` reads, each
with its answer and skill in its metadata. Pure: no Kafka, no model.

A line is a prompt (schemas/models.py `Prompt.from_json`) whose metadata holds `reference` (the
answer), `skill` (the profile's column it counts towards) and optionally `scorer` (a name
agents/scoring.py knows; otherwise the run's default). Every line that cannot be used is an
error naming the file and line, before any model runs: a benchmark that silently lost lines would
measure something else than it says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from karma.agents.scoring import BUILT_IN, REFERENCE_KEY, SCORER_KEY, SKILL_KEY, ScorerError, score, scorer
from karma.schemas.models import Prompt


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    """One benchmark prompt: what a model is asked, and how its answer is checked."""

    prompt: Prompt
    skill: str
    reference: str
    scorer: str
    where: str  # FILE:LINE, for any later error about this item


def read_benchmark(path: Path, default_scorer: str = "exact") -> list[Item]:
    """Every item of the JSONL at `path`, in file order; BenchmarkError on the first bad line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BenchmarkError(f"cannot read benchmark {path}: {exc.strerror}") from None
    items = [
        parse_item(line, f"{path}:{line_no}", default_scorer)
        for line_no, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not items:
        raise BenchmarkError(f"{path}: no prompts in the benchmark")
    return items


def parse_item(line: str, where: str, default_scorer: str = "exact") -> Item:
    """One JSONL line to an Item; BenchmarkError saying `where` and what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    try:
        prompt = Prompt.from_json(data, source="karma-profile")
    except ValueError as exc:
        raise BenchmarkError(f"{where}: {exc}") from None
    missing = [key for key in (REFERENCE_KEY, SKILL_KEY) if not prompt.metadata.get(key, "").strip()]
    if missing:
        raise BenchmarkError(
            f"{where}: metadata needs {' and '.join(repr(k) for k in missing)} "
            f"(the answer, and the skill it counts towards)"
        )
    name = prompt.metadata.get(SCORER_KEY) or default_scorer
    reference = prompt.metadata[REFERENCE_KEY]
    try:
        scorer(name)  # imports a user's module:function now, not after the first model has run
        if name in BUILT_IN:
            # The reference must pass its own check (a `numeric` reference must hold a number).
            score(name, reference, reference)
    except ScorerError as exc:
        raise BenchmarkError(f"{where}: {exc}") from None
    return Item(
        prompt=prompt, skill=prompt.metadata[SKILL_KEY].strip(), reference=reference, scorer=name, where=where
    )


def skills_of(items: list[Item]) -> list[str]:
    """The skills in the order they first appear: the profile's columns."""
    return list(dict.fromkeys(item.skill for item in items))
