"""What a model's answers add up to: accuracy per skill, with its count, and the failures. Pure:
no Kafka, no model.

A model's accuracy on a skill is the mean score of its answers to that skill's prompts (a scorer
says 1.0 right, 0.0 wrong; a user's own may give partial credit). A prompt the backend failed on
for good (a `BackendError`) scores 0: the profile measures what the model delivers, and a model
that cannot answer does not know. Failures are counted per model, and per kind, so a run that
measured a broken server says so instead of reporting a weak model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from karma.agents.scoring import ScorerError, score
from karma.tools.profile.benchmark import Item


class ScoringError(ValueError):
    """A scorer that failed on an answer; the message names the benchmark line and the model."""


@dataclass(frozen=True)
class Failure:
    """A prompt the model gave no answer to: why (BackendError's kind and reason)."""

    kind: str
    reason: str


@dataclass
class ModelTally:
    """One model's running totals, per skill."""

    model: str
    totals: dict[str, float] = field(default_factory=dict)  # skill -> sum of scores
    counts: dict[str, int] = field(default_factory=dict)  # skill -> prompts
    failures: Counter[str] = field(default_factory=Counter)  # kind -> prompts failed
    first_failure: dict[str, str] = field(default_factory=dict)  # kind -> the first reason, to show

    def add(self, item: Item, answer: str | Failure) -> float:
        """Counts one answer (or failure) to `item`; returns its score."""
        if isinstance(answer, Failure):
            value = 0.0
            self.failures[answer.kind] += 1
            self.first_failure.setdefault(answer.kind, answer.reason)
        else:
            value = score_answer(item, answer, self.model)
        self.totals[item.skill] = self.totals.get(item.skill, 0.0) + value
        self.counts[item.skill] = self.counts.get(item.skill, 0) + 1
        return value

    def accuracy(self) -> dict[str, float]:
        """skill -> mean score, for every skill with at least one prompt."""
        return {skill: self.totals[skill] / n for skill, n in self.counts.items()}

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def score_answer(item: Item, answer: str, model: str) -> float:
    """`answer` checked against the item's reference by its scorer."""
    try:
        return score(item.scorer, answer, item.reference)
    except ScorerError as exc:
        raise ScoringError(f"{item.where}: model {model}: {exc}") from None


def tally(model: str, items: Sequence[Item], answers: Sequence[str | Failure]) -> ModelTally:
    """A model's tally over `items`, answered in the same order."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    result = ModelTally(model)
    for item, answer in zip(items, answers, strict=True):
        result.add(item, answer)
    return result
