"""`karma eval`'s figures: what one pairing policy's preferences look like, as pure functions of
the preferences (no Kafka, no files), so they are tested on hand-built records.

`summarise` gives a policy's `PolicySummary`: pairs per prompt, the superiority-gap distribution
(`percentile`, `histogram`), position consistency, tie rate and, where there is a ground truth
(a model's latent quality), `label_accuracy`. Beside the configured judge, every preference is
also labelled by ZEBRA (`zebra_label`: the more superior model's response wins,
agents/backends/zebra.py) from the superiorities it already carries, so the two labellers are
compared on the same pairs without another run.

Where prompts carry a reference (metadata `reference`, checked by agents/scoring.py as the verifier
judge checks it), `reference_truth` gives the *checked truth* of a pair: the answer that is right
when exactly one is. `checked_accuracy` is each labeller's share of non-tie labels that chose it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from karma.agents.backends.verifier import verifier_winner
from karma.agents.backends.zebra import zebra_winner
from karma.agents.scoring import REFERENCE_KEY, SCORER_KEY, score
from karma.schemas.models import Preference, Winner

GAP_BIN_WIDTH = 0.05  # superiority gaps live in [0, 1]: 20 bins
# Same quality within float noise: such a pair has no right answer, so it is left out of accuracy.
QUALITY_EPSILON = 1e-9

# The checked truth of a preference's pair: the answer the verifier scores right when exactly one
# is (Winner.A or Winner.B), None when both or neither are, or the prompt has no reference.
Truth = Callable[[Preference], Winner | None]


class Histogram(BaseModel):
    """Counts per bin: bin i is [edges[i], edges[i + 1]), the last one closed."""

    edges: list[float]
    counts: list[int]


class PolicySummary(BaseModel):
    """What one policy's preferences look like. Shares are in [0, 1]; None means "no data"."""

    policy: str
    prompts: int
    pairs: int  # distinct preferences (one per judged pair)
    pairs_per_prompt: float
    prompts_with_pairs: float  # share of prompts with at least one pair
    labelled_per_prompt: float  # non-tie preferences per prompt: what a DPO trainer can use
    gap_mean: float | None
    gap_median: float | None
    gap_p10: float | None
    gap_p90: float | None
    gap_histogram: Histogram  # bins of GAP_BIN_WIDTH
    position_consistency: float | None  # share of preferences whose two verdicts agreed
    tie_rate: float | None
    label_accuracy: float | None  # share of decidable labels that chose the truly better model
    label_accuracy_n: int  # how many labels label_accuracy is computed over
    quality_gap_mean: float | None  # mean |latent quality difference| of the pairs
    # ZEBRA (the more superior model wins) on the same pairs, from the superiorities they carry:
    zebra_agreement: float | None = None  # share of zebra's labels that match the judge's...
    zebra_agreement_n: int = 0  # ...over the pairs both labelled (judge not a tie, zebra not a tie)
    zebra_ties: int = 0  # pairs of two equally superior models: zebra has no label
    zebra_tie_rate: float | None = None
    zebra_accuracy: float | None = None  # as label_accuracy, for zebra's labels
    zebra_accuracy_n: int = 0
    # Against the checked truth (prompts with a reference, pairs with exactly one right answer):
    checked_pairs: int = 0  # pairs with a checked truth
    checked_accuracy: float | None = None  # share of the judge's non-tie labels there that chose it
    checked_accuracy_n: int = 0
    zebra_checked_accuracy: float | None = None  # as checked_accuracy, for zebra's labels
    zebra_checked_accuracy_n: int = 0
    seconds: float | None = None  # wall time of this policy's run
    dlq: int = 0  # dead letters of this policy's run
    topic_prefix: str | None = None  # where its records stay, for `karma tail`
    gaps: list[float] = Field(default_factory=list, exclude=True)  # raw, for the plots only


def summarise(
    policy: str,
    prompts_count: int,
    preferences: Iterable[Preference],
    quality: Callable[[str], float] | None,
    truth: Truth | None = None,
    **extra: Any,
) -> PolicySummary:
    """The figures of one policy's preferences (de-duplicated by id: delivery is at least once).

    `quality` is the ground truth (a model's latent quality) where there is one, else None;
    `truth` the checked truth of a pair (`reference_truth`) where prompts carry references.
    `extra` fills the run fields (seconds, dlq, topic_prefix).
    """
    unique = list({p.preference_id: p for p in preferences}.values())
    n = len(unique)
    gaps = sorted(p.gap for p in unique)
    labelled = [p for p in unique if p.winner is not Winner.TIE]
    # The same preferences as zebra labels them; a non-finite superiority gets no zebra label at all.
    relabelled = [(p, z) for p in unique if (z := zebra_label(p)) is not None]
    zebra_labelled = [z for _, z in relabelled if z.winner is not Winner.TIE]
    both = [p.winner is z.winner for p, z in relabelled if Winner.TIE not in (p.winner, z.winner)]
    zebra_ties = len(relabelled) - len(zebra_labelled)
    accuracy, decidable, quality_gap = None, 0, None
    zebra_accuracy, zebra_decidable = None, 0
    if quality is not None:
        accuracy, decidable = label_accuracy(labelled, quality)
        zebra_accuracy, zebra_decidable = label_accuracy(zebra_labelled, quality)
        if unique:
            quality_gap = statistics.fmean(
                abs(quality(p.response_a.model) - quality(p.response_b.model)) for p in unique
            )
    checked: dict[str, Any] = {}
    if truth is not None:
        truths = {p.preference_id: truth(p) for p in unique}  # scored once, read by both labellers
        known = truths.__getitem__
        accuracy_checked, n_checked = checked_accuracy(labelled, lambda p: known(p.preference_id))
        zebra_checked, zebra_n = checked_accuracy(zebra_labelled, lambda p: known(p.preference_id))
        checked = {
            "checked_pairs": sum(t is not None for t in truths.values()),
            "checked_accuracy": accuracy_checked,
            "checked_accuracy_n": n_checked,
            "zebra_checked_accuracy": zebra_checked,
            "zebra_checked_accuracy_n": zebra_n,
        }
    per_prompt = 1 / prompts_count if prompts_count else 0.0
    return PolicySummary(
        policy=policy,
        prompts=prompts_count,
        pairs=n,
        pairs_per_prompt=n * per_prompt,
        prompts_with_pairs=len({p.prompt_id for p in unique}) * per_prompt,
        labelled_per_prompt=len(labelled) * per_prompt,
        gap_mean=statistics.fmean(gaps) if gaps else None,
        gap_median=percentile(gaps, 50),
        gap_p10=percentile(gaps, 10),
        gap_p90=percentile(gaps, 90),
        gap_histogram=histogram(gaps),
        position_consistency=sum(p.consistent for p in unique) / n if n else None,
        tie_rate=(n - len(labelled)) / n if n else None,
        label_accuracy=accuracy,
        label_accuracy_n=decidable,
        quality_gap_mean=quality_gap,
        zebra_agreement=sum(both) / len(both) if both else None,
        zebra_agreement_n=len(both),
        zebra_ties=zebra_ties,
        zebra_tie_rate=zebra_ties / len(relabelled) if relabelled else None,
        zebra_accuracy=zebra_accuracy,
        zebra_accuracy_n=zebra_decidable,
        gaps=gaps,
        **checked,
        **extra,
    )


def label_accuracy(
    labelled: Iterable[Preference], quality: Callable[[str], float]
) -> tuple[float | None, int]:
    """Among non-tie preferences of two models of different latent quality, the share that chose
    the better model, and how many there were (None when there were none)."""
    right = decidable = 0
    for p in labelled:
        chosen, rejected = p.chosen, p.rejected
        assert chosen is not None and rejected is not None  # not a tie
        difference = quality(chosen.model) - quality(rejected.model)
        if abs(difference) > QUALITY_EPSILON:
            decidable += 1
            right += difference > 0
    return (right / decidable if decidable else None), decidable


def reference_truth(metadata_of: Mapping[str, Mapping[str, str]], default_scorer: str) -> Truth:
    """The checked truth of a pair from its prompt's metadata (`metadata_of`: prompt id -> metadata),
    as the verifier judge checks it: the scorer the metadata names, else `default_scorer`."""

    def truth(p: Preference) -> Winner | None:
        metadata = metadata_of.get(p.prompt_id, {})
        reference = metadata.get(REFERENCE_KEY)
        if reference is None or not reference.strip():
            return None
        name = metadata.get(SCORER_KEY) or default_scorer
        try:
            shown = verifier_winner(
                score(name, p.response_a.text, reference), score(name, p.response_b.text, reference)
            )
        except Exception:  # a scorer that fails: the verifier letters such a pair; it has no truth here
            return None
        return {"A": Winner.A, "B": Winner.B}.get(shown)

    return truth


def checked_accuracy(labelled: Iterable[Preference], truth: Truth) -> tuple[float | None, int]:
    """Among non-tie preferences whose pair has a checked truth, the share whose winner is the
    right answer, and how many there were (None when there were none)."""
    right = checked = 0
    for p in labelled:
        expected = truth(p)
        if expected is not None:
            checked += 1
            right += p.winner is expected
    return (right / checked if checked else None), checked


def zebra_label(p: Preference) -> Preference | None:
    """The preference as ZEBRA would have labelled it, from the superiority each candidate carries
    (what the rating stage used when pairing); None when a superiority is not a finite number."""
    try:
        shown = zebra_winner(p.response_a.superiority, p.response_b.superiority)
    except ValueError:
        return None
    winner = {"A": Winner.A, "B": Winner.B, "tie": Winner.TIE}[shown]
    return p.model_copy(update={"winner": winner, "judge": "zebra"})


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile of sorted values, interpolated linearly between ranks (numpy's default)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def histogram(values: Sequence[float]) -> Histogram:
    """Counts in bins of GAP_BIN_WIDTH from 0 up to the largest value (at least 1); the last bin
    is closed so that a gap of exactly 1 is counted."""
    top = max(1.0, max(values, default=0.0))
    bins = math.ceil(round(top / GAP_BIN_WIDTH, 9))
    edges = [round(i * GAP_BIN_WIDTH, 10) for i in range(bins + 1)]
    counts = [0] * bins
    for value in values:
        # Rounded first: 0.3 / 0.05 is 5.999... in floating point, and 0.3 belongs to [0.30, 0.35).
        counts[min(bins - 1, max(0, math.floor(round(value / GAP_BIN_WIDTH, 9))))] += 1
    return Histogram(edges=edges, counts=counts)
