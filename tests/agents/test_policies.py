"""Pairing policies pick distinct responses of distinct models, deterministically."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from karma.agents.kinship import KinRule, Scored, load_profiles
from karma.agents.policies import POLICIES, select_pairs

PROFILES = load_profiles()
MODELS = sorted(PROFILES.vectors)
LOOSE = KinRule(tau=-1.0, delta=1.0)


def scored(models: list[str], lengths: list[int] | None = None) -> list[Scored]:
    return [
        Scored(f"r-{m}", m, PROFILES.superiority(m), None if lengths is None else lengths[i])
        for i, m in enumerate(models)
    ]


def test_sup_is_top_one_against_top_two() -> None:
    pool = scored(MODELS)
    ranked = sorted(pool, key=lambda c: -c.superiority)
    (pair,) = select_pairs("sup", pool, PROFILES, LOOSE)
    assert {pair.a.model, pair.b.model} == {ranked[0].model, ranked[1].model}


def test_maxgap_pairs_the_best_with_a_worse_one() -> None:
    pool = scored(MODELS)
    best = max(pool, key=lambda c: c.superiority)
    (pair,) = select_pairs("maxgap", pool, PROFILES, LOOSE, seed_key="p1")
    assert pair.b == best and pair.a.superiority < best.superiority


def test_sim_picks_the_most_similar_pair_and_hybrid_trades_it_against_the_gap() -> None:
    pool = scored(MODELS[:8])
    every = list(itertools.combinations(pool, 2))
    (sim,) = select_pairs("sim", pool, PROFILES, LOOSE)
    assert sim.similarity == pytest.approx(max(PROFILES.similarity(a.model, b.model) for a, b in every))
    # With all weight on the gap, hybrid is the pair of closest superiority.
    (closest,) = select_pairs("hybrid", pool, PROFILES, LOOSE, hybrid_weight=0.0)
    assert closest.gap == pytest.approx(min(abs(a.superiority - b.superiority) for a, b in every))


def test_all_is_every_pair_once() -> None:
    pool = scored(MODELS[:6])
    pairs = select_pairs("all", pool, PROFILES, LOOSE)
    assert len(pairs) == 15
    assert len({frozenset((p.a.response_id, p.b.response_id)) for p in pairs}) == 15


def test_random_choices_are_seeded_by_the_prompt() -> None:
    pool = scored(MODELS)
    first = select_pairs("random", pool, PROFILES, LOOSE, seed_key="prompt-7")
    assert select_pairs("random", pool, PROFILES, LOOSE, seed_key="prompt-7") == first
    picks = {
        frozenset((p.a.model, p.b.model))
        for i in range(30)
        for p in select_pairs("random", pool, PROFILES, LOOSE, seed_key=f"prompt-{i}")
    }
    assert len(picks) > 5  # different prompts, different pairs


def test_kin_complexity_gate_keeps_very_unequal_lengths_apart() -> None:
    pool = ["llama-2-13b-chat", "wizardlm-13b"]
    rule = KinRule(tau=0.95, delta=0.15, min_length_ratio=0.25)
    assert len(select_pairs("kin", scored(pool, [40, 30]), PROFILES, rule)) == 1
    assert select_pairs("kin", scored(pool, [40, 9]), PROFILES, rule) == []  # 9/40 < 0.25


def test_fewer_than_two_models_give_no_pair() -> None:
    one = scored(["gpt-4"])
    twice = [*one, Scored("r-other", "gpt-4", one[0].superiority)]
    for policy in POLICIES:
        assert select_pairs(policy, twice, PROFILES, LOOSE) == []


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    models=st.lists(st.sampled_from(MODELS), min_size=0, max_size=12),
    seed=st.text(max_size=8),
)
def test_every_selected_pair_is_two_distinct_responses_of_two_models(
    policy: str, models: list[str], seed: str
) -> None:
    # Duplicated models are allowed in the input: one response per model is used.
    pool = [Scored(f"r-{i}", m, PROFILES.superiority(m), 10 + i) for i, m in enumerate(models)]
    ids = {c.response_id for c in pool}
    for pair in select_pairs(policy, pool, PROFILES, LOOSE, seed_key=seed):  # type: ignore[arg-type]
        assert pair.a.response_id != pair.b.response_id
        assert pair.a.model != pair.b.model
        assert {pair.a.response_id, pair.b.response_id} <= ids
        assert pair.a.superiority <= pair.b.superiority


def test_unknown_policy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown policy 'best'"):
        select_pairs("best", scored(MODELS[:3]), PROFILES, LOOSE)  # type: ignore[arg-type]


def test_policy_names_are_what_the_config_accepts() -> None:
    from karma.streams.config import KarmaSettings

    for policy in POLICIES:
        assert KarmaSettings(policy=policy).policy == policy
    with pytest.raises(ValueError, match="policy"):
        KarmaSettings(policy="best")
