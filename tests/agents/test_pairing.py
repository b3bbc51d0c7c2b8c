"""Pair selection of one prompt's gathered responses, without Kafka."""

from __future__ import annotations

from karma.agents.gathering import Gathered
from karma.agents.kinship import KinRule, load_profiles
from karma.agents.pairing import make_pairs
from karma.schemas.models import pair_id_for


def _gathered(models: list[str]) -> Gathered:
    return Gathered(
        prompt_id="p-1",
        prompt_text="Why is the sky blue?",
        responses={m: {"response_id": f"r-{m}", "text": f"answer of {m}", "simulated": True} for m in models},
    )


def test_make_pairs_builds_valid_kin_pairs_with_deterministic_ids() -> None:
    pool = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
    pairs = make_pairs(_gathered(pool), load_profiles(), KinRule(0.95, 0.15))
    assert len(pairs) == 2
    for pair in pairs:
        assert pair.pair_id == pair_id_for("p-1", pair.response_a.response_id, pair.response_b.response_id)
        assert pair.response_a.text == f"answer of {pair.response_a.model}"
        assert pair.policy == "kin"
        assert pair.response_a.superiority <= pair.response_b.superiority
    again = make_pairs(_gathered(pool), load_profiles(), KinRule(0.95, 0.15))
    assert [p.pair_id for p in again] == [p.pair_id for p in pairs]


def test_no_kin_no_pairs() -> None:
    assert make_pairs(_gathered(["gpt-4", "pythia-12b"]), load_profiles(), KinRule(0.95, 0.15)) == []


def test_one_response_makes_no_pair() -> None:
    assert make_pairs(_gathered(["gpt-4"]), load_profiles(), KinRule(-1, 1)) == []


def test_pairing_follows_the_superiority_it_is_given_not_only_the_profiles() -> None:
    pool = ["llama-2-7b-chat", "llama-2-13b-chat", "vicuna-33b", "llama-2-70b-chat"]
    profiles, rule = load_profiles(), KinRule(0.95, 0.1)

    def partners(superiority: dict[str, float] | None) -> set[str]:
        pairs = make_pairs(_gathered(pool), profiles, rule, superiority=superiority)
        models = [{p.response_a.model, p.response_b.model} for p in pairs]
        return {m for pair in models if "llama-2-7b-chat" in pair for m in pair} - {"llama-2-7b-chat"}

    assert partners(None) == {"llama-2-13b-chat"}  # by the profiles: 0.41 next to 0.45
    # Online evidence put it at 0.56: now it sits between vicuna-33b and llama-2-70b-chat.
    learned = {m: profiles.superiority(m) for m in pool} | {"llama-2-7b-chat": 0.5745}
    assert partners(learned) & {"vicuna-33b", "llama-2-70b-chat"}
    pair = next(
        p
        for p in make_pairs(_gathered(pool), profiles, rule, superiority=learned)
        if "llama-2-7b-chat" in (p.response_a.model, p.response_b.model)
    )
    assert 0.5745 in (pair.response_a.superiority, pair.response_b.superiority)
