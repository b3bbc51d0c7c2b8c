"""Which pairs of one prompt's responses go to the judge: the chosen policy over the responses'
superiority (the profiles', or the blended online estimate), made into KinPair records.
Pure: the rating stage and `karma audit` both call it, and it is tested without Kafka."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from karma.agents.gathering import Gathered
from karma.agents.kinship import KinRule, Profiles, Scored
from karma.agents.policies import Policy, select_pairs
from karma.schemas.models import Candidate, KinPair, pair_id_for


@dataclass
class LiveCompetency:
    """The superiority pairing uses now (model -> blended value) and when it was computed."""

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
    `superiority` (model -> value, e.g. the blended online estimate) overrides the profiles'."""
    superiority = superiority or {}
    scored = [
        Scored(
            response_id=r["response_id"],
            model=model,
            superiority=superiority.get(model, profiles.superiority(model)),
            length=len(r["text"].split()),
        )
        for model, r in gathered.responses.items()
    ]
    pairs = []
    chosen_pairs = select_pairs(
        policy, scored, profiles, rule, seed_key=gathered.prompt_id, hybrid_weight=hybrid_weight
    )
    for chosen in chosen_pairs:
        a, b = (gathered.responses[chosen.a.model], gathered.responses[chosen.b.model])
        pairs.append(
            KinPair(
                pair_id=pair_id_for(gathered.prompt_id, a["response_id"], b["response_id"]),
                prompt_id=gathered.prompt_id,
                prompt_text=gathered.prompt_text,
                response_a=Candidate(
                    response_id=a["response_id"],
                    model=chosen.a.model,
                    text=a["text"],
                    superiority=chosen.a.superiority,
                    simulated=a["simulated"],
                ),
                response_b=Candidate(
                    response_id=b["response_id"],
                    model=chosen.b.model,
                    text=b["text"],
                    superiority=chosen.b.superiority,
                    simulated=b["simulated"],
                ),
                policy=policy,
                similarity=chosen.similarity,
                gap=chosen.gap,
            )
        )
    return pairs
