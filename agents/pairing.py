"""Which pairs of one prompt's responses go to the judge: the chosen policy over the responses'
superiority (the profiles', or the blended online estimate), made into KinPair records.
Pure: the rating stage and `karma audit` both call it, and it is tested without Kafka."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from karma.agents.competency import superiority_of
from karma.agents.gathering import Gathered
from karma.agents.kinship import KinRule, Profiles, Scored
from karma.agents.policies import Policy, select_pairs
from karma.schemas.models import Candidate, KinPair, pair_id_for


@dataclass
class LiveCompetency:
    """The superiority pairing uses now (player -> blended value: a model, or a version of one as
    agents/competency.py names it) and when it was computed."""

    superiority: dict[str, float]
    refreshed_at: float = 0.0  # ms


def make_pairs(
    gathered: Gathered,
    profiles: Profiles,
    rule: KinRule,
    policy: Policy = "kin",
    hybrid_weight: float = 0.5,
    superiority: Mapping[str, float] | None = None,
) -> list[KinPair]:
    """The pairs `policy` picks among one prompt's responses: pure, so it is tested without Kafka.
    `superiority` (player -> value, e.g. the blended online estimate) overrides the profiles':
    each response is scored as the version of its model that wrote it."""
    superiority = superiority or {}
    scored = [
        Scored(
            response_id=r["response_id"],
            model=model,
            superiority=superiority_of(model, r.get("model_version", 1), superiority, profiles),
            length=len(r["text"].split()),
        )
        for model, r in gathered.responses.items()
    ]
    pairs = []
    chosen_pairs = select_pairs(
        policy, scored, profiles, rule, seed_key=gathered.prompt_id, hybrid_weight=hybrid_weight
    )
    for chosen in chosen_pairs:
        a, b = (_candidate(gathered.responses[side.model], side) for side in (chosen.a, chosen.b))
        pairs.append(
            KinPair(
                pair_id=pair_id_for(gathered.prompt_id, a.response_id, b.response_id),
                prompt_id=gathered.prompt_id,
                prompt_text=gathered.prompt_text,
                response_a=a,
                response_b=b,
                policy=policy,
                similarity=chosen.similarity,
                gap=chosen.gap,
                prompt_metadata=gathered.prompt_metadata,
            )
        )
    return pairs


def _candidate(response: Mapping[str, Any], scored: Scored) -> Candidate:
    """One side of a pair: the gathered response and the superiority it was scored with."""
    return Candidate(
        response_id=response["response_id"],
        model=scored.model,
        text=response["text"],
        superiority=scored.superiority,
        simulated=response["simulated"],
        model_version=response.get("model_version", 1),
    )
