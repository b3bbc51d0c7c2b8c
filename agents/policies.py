"""Pairing policies: which responses of one prompt go to the judge. Pure functions, no Kafka.

Every policy takes the scored responses of one prompt and returns pairs of two distinct
responses from two distinct models. They are selectable per pipeline (`policy:` in the
config) so that users can compare them on their own pool:

- `kin`: KARMA. Responses sorted by superiority, each paired with its nearest kin above it
  (similar profile, superiority gap within delta, comparable length), looked for only within
  delta of it.
- `sup`: quality-first (ZEBRA): the two most superior models, top-1 vs top-2.
- `sim`: the pair of models with the most similar profiles.
- `hybrid`: the pair maximising `w * similarity - (1 - w) * gap`.
- `maxgap`: UltraFeedback-style: the most superior response against a random worse one.
- `random`: one random pair.
- `all`: every pair (k(k-1)/2 of them).

Random choices are seeded by the prompt id, so a replay picks the same pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Literal, get_args

from karma.agents.kinship import ChosenPair, KinRule, Profiles, Scored, kin_pairs
from karma.agents.seeding import seeded_rng

Policy = Literal["kin", "sup", "sim", "hybrid", "maxgap", "random", "all"]
POLICIES: tuple[str, ...] = get_args(Policy)


def select_pairs(
    policy: Policy,
    candidates: Sequence[Scored],
    profiles: Profiles,
    rule: KinRule,
    *,
    seed_key: str = "",
    hybrid_weight: float = 0.5,
) -> list[ChosenPair]:
    """The pairs `policy` picks among one prompt's responses (at most one response per model)."""
    distinct = _one_per_model(candidates)
    if len(distinct) < 2:
        return []
    if policy == "kin":
        return kin_pairs(distinct, profiles, rule)
    ranked = sorted(distinct, key=lambda c: (-c.superiority, c.response_id))
    if policy == "sup":
        return [_pair(ranked[0], ranked[1], profiles)]
    if policy == "maxgap":
        rng = seeded_rng("maxgap", seed_key)
        return [_pair(ranked[0], rng.choice(ranked[1:]), profiles)]
    if policy == "random":
        a, b = seeded_rng("random", seed_key).sample(ranked, 2)
        return [_pair(a, b, profiles)]
    every = [_pair(a, b, profiles) for a, b in itertools.combinations(ranked, 2)]
    if policy == "all":
        return every
    scores: dict[str, Callable[[ChosenPair], float]] = {
        "sim": lambda p: p.similarity,
        "hybrid": lambda p: hybrid_weight * p.similarity - (1 - hybrid_weight) * p.gap,
    }
    if policy not in scores:
        raise ValueError(f"unknown policy {policy!r}; choose from {list(POLICIES)}")
    # Ties go to the pair with the smaller gap, then to the ids, so the choice is stable.
    return [max(every, key=lambda p: (scores[policy](p), -p.gap, p.a.response_id, p.b.response_id))]


def _one_per_model(candidates: Sequence[Scored]) -> list[Scored]:
    chosen: dict[str, Scored] = {}
    for candidate in sorted(candidates, key=lambda c: c.response_id):
        chosen.setdefault(candidate.model, candidate)
    return list(chosen.values())


def _pair(a: Scored, b: Scored, profiles: Profiles) -> ChosenPair:
    low, high = sorted((a, b), key=lambda c: (c.superiority, c.response_id))
    return ChosenPair(
        a=low,
        b=high,
        similarity=profiles.similarity(low.model, high.model),
        gap=abs(high.superiority - low.superiority),
    )
