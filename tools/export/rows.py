"""What one preference becomes in an exported shard: TRL's DPO row plus the labels' provenance,
and which preferences are left out and why. No Kafka and no files here.

A row has the columns of `COLUMNS`, in that order:

- `prompt`, `chosen`, `rejected`: plain strings, TRL's "standard" preference format; or, with
  `messages`, its "conversational" format: `[{"role": "user", "content": prompt}]` and
  `[{"role": "assistant", "content": answer}]` for each answer;
- `soft_label`: P(chosen is better) from the judge's log-probabilities (the preference carries
  P(A is better); a row turns it to the chosen side), null when the judge served none;
- `gap`, `confidence`, `chosen_model`, `rejected_model`, `judge`, `policy`, `simulated`,
  `preference_id`, `pair_id`, `prompt_id`: as on the preference;
- `chosen_score`, `rejected_score`: the verifier's scores of the two answers against the prompt's
  reference (the preference's `score_a`/`score_b`, turned to the chosen side), null from any other
  judge.

Ties are never exported: TRL's DPO needs a winner, and a tie has no chosen and no rejected
answer. They are counted (`Skip.TIE`), like the preferences a filter leaves out and the messages
that do not decode as preferences (those are the dead-letter topic's business upstream; here
they are counted and reported, never fatal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from karma.schemas.models import Preference, Winner
from karma.streams.codecs import DecodeError, decode

Row = dict[str, Any]

COLUMNS: tuple[str, ...] = (
    "prompt",
    "chosen",
    "rejected",
    "soft_label",
    "gap",
    "confidence",
    "chosen_model",
    "rejected_model",
    "judge",
    "policy",
    "simulated",
    "preference_id",
    "pair_id",
    "prompt_id",
    "chosen_score",
    "rejected_score",
)


class Skip(StrEnum):
    """Why a message of the preferences topic is not a row (the manifest counts each reason)."""

    UNDECODABLE = "undecodable"  # not a valid Preference record
    TIE = "tie"  # no winner: nothing for DPO to learn
    POLICY = "policy"  # paired by a policy the export does not take
    CONFIDENCE = "confidence"  # the judge's confidence is below the minimum


@dataclass(frozen=True)
class RowFilter:
    """Which decided preferences become rows: those of the given policies (all when empty) whose
    judge confidence is at least `min_confidence` (any when None)."""

    min_confidence: float | None = None
    policies: frozenset[str] = field(default_factory=frozenset)

    def skip_reason(self, preference: Preference) -> Skip | None:
        # A tie is reported as a tie whatever else holds: it could never have been a row.
        if preference.winner == Winner.TIE:
            return Skip.TIE
        if self.policies and preference.policy not in self.policies:
            return Skip.POLICY
        if self.min_confidence is not None and preference.confidence < self.min_confidence:
            return Skip.CONFIDENCE
        return None

    def describe(self) -> dict[str, Any]:
        """As recorded in each manifest: the shards of one folder must agree on it."""
        return {"min_confidence": self.min_confidence, "policies": sorted(self.policies)}


def row_of(preference: Preference, messages: bool = False) -> Row | None:
    """The shard row of a preference (see the module docstring); None for a tie."""
    trl = preference.to_trl()
    chosen, rejected = preference.chosen, preference.rejected
    if trl is None or chosen is None or rejected is None:
        return None
    soft = preference.soft_label
    chosen_score, rejected_score = preference.score_a, preference.score_b
    if preference.winner == Winner.B:
        if soft is not None:
            soft = 1.0 - soft  # the record's soft label is P(A is better); a row's is P(chosen is better)
        chosen_score, rejected_score = rejected_score, chosen_score
    prompt, chosen_text, rejected_text = trl["prompt"], trl["chosen"], trl["rejected"]
    if messages:
        prompt = [{"role": "user", "content": prompt}]
        chosen_text = [{"role": "assistant", "content": chosen_text}]
        rejected_text = [{"role": "assistant", "content": rejected_text}]
    row: Row = {
        "prompt": prompt,
        "chosen": chosen_text,
        "rejected": rejected_text,
        "soft_label": soft,
        "gap": preference.gap,
        "confidence": preference.confidence,
        "chosen_model": chosen.model,
        "rejected_model": rejected.model,
        "judge": preference.judge,
        "policy": preference.policy,
        "simulated": trl["simulated"],
        "preference_id": trl["preference_id"],
        "pair_id": preference.pair_id,
        "prompt_id": preference.prompt_id,
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
    }
    return row


@dataclass(frozen=True)
class Skipped:
    """A message that is no row: why, and for an undecodable one the decoder's reason."""

    reason: Skip
    detail: str | None = None


def classify(value: bytes | None, row_filter: RowFilter, messages: bool = False) -> Row | Skipped:
    """One message value of the preferences topic: its row, or why it has none."""
    try:
        preference = decode(value, Preference)
    except DecodeError as exc:
        return Skipped(Skip.UNDECODABLE, exc.reason)
    reason = row_filter.skip_reason(preference)
    if reason is not None:
        return Skipped(reason)
    row = row_of(preference, messages)
    return row if row is not None else Skipped(Skip.TIE)
