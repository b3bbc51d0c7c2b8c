"""The tests' kin oracle (tests/oracle.py) pinned to pairs worked out by hand, and held against
the pipeline's kinship code (agents/kinship.py, agents/pairing.py): two implementations of the
README's rule that must agree, so a bug in either fails here."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from karma.agents.gathering import Gathered
from karma.agents.kinship import KinRule, Scored, kin_pairs, load_profiles
from karma.agents.pairing import make_pairs
from karma.schemas.models import pair_id_for, response_id_for
from karma.streams.config import DEFAULT_POOL, KinSettings
from tests.oracle import KinPairOf, expected_pair_ids, kin_model_pairs, read_table

POOL = [m.name for m in DEFAULT_POOL]
DEFAULTS = KinSettings()

# Worked out from agents/data/model_benchmarks.csv. Each column is min-max normalised over the
# table's 16 models: ifeval 24.07 (llama-2-70b-chat) .. 89.33 (bard), mmlu 27.00 (pythia-12b) ..
# 86.40 (gpt-4), mmlu_pro 11.80 (starchat) .. 63.71, hellaswag 23.60 (alpaca-7b) .. 95.30,
# arc_easy 16.96 (starchat) .. 96.63, arc_challenge 9.07 (starchat) .. 96.40 (maxima: gpt-4).
# E.g. llama-2-13b-chat: ifeval (24.82-24.07)/65.26 = 0.0115, mmlu (57.80-27.00)/59.40 = 0.5185,
# 0.2608, 0.6639, 0.6915, 0.5605: mean (superiority) 0.4511. Likewise for the others:
HAND_SUPERIORITY = {
    "llama-2-13b-chat": 0.4511,
    "wizardlm-13b": 0.4514,
    "vicuna-33b": 0.5738,
    "llama-2-70b-chat": 0.5752,
    "gpt-3.5-turbo": 0.7699,
}
# Sorted by superiority, the neighbours are (cosine of the normalised vectors, gap):
#   llama-2-13b-chat / wizardlm-13b   0.9769, 0.0002  kin (>= 0.95, <= 0.15)
#   wizardlm-13b / vicuna-33b         0.9676, 0.1224  kin
#   vicuna-33b / llama-2-70b-chat     0.9408, 0.0014  not kin: too dissimilar
#   llama-2-70b-chat / gpt-3.5-turbo  0.9194, 0.1948  not kin: dissimilar and too far apart
# llama-2-13b-chat / llama-2-70b-chat (0.9918, 0.1240) would be kin but are not neighbours.
HAND_NEIGHBOURS = [
    ("llama-2-13b-chat", "wizardlm-13b", 0.9769, 0.0002),
    ("wizardlm-13b", "vicuna-33b", 0.9676, 0.1224),
    ("vicuna-33b", "llama-2-70b-chat", 0.9408, 0.0014),
    ("llama-2-70b-chat", "gpt-3.5-turbo", 0.9194, 0.1948),
]
DEFAULT_POOL_KIN = [
    KinPairOf("llama-2-13b-chat", "wizardlm-13b"),
    KinPairOf("wizardlm-13b", "vicuna-33b"),
]


def pipeline_pair_ids(
    prompt_id: str,
    models: list[str],
    rule: KinRule,
    profiles_path: Path | None = None,
    superiority: dict[str, float] | None = None,
    lengths: dict[str, int] | None = None,
) -> set[str]:
    """What agents/kinship.py picks for one prompt answered by `models`."""
    profiles = load_profiles(profiles_path)
    scored = [
        Scored(
            response_id_for(prompt_id, m),
            m,
            (superiority or {}).get(m, profiles.superiority(m)),
            None if lengths is None else lengths[m],
        )
        for m in models
    ]
    return {
        pair_id_for(prompt_id, pair.a.response_id, pair.b.response_id)
        for pair in kin_pairs(scored, profiles, rule)
    }


def oracle_pair_ids(
    prompt_id: str,
    models: list[str],
    rule: KinRule,
    profiles_path: Path | None = None,
    superiority: dict[str, float] | None = None,
    lengths: dict[str, int] | None = None,
) -> set[str]:
    return expected_pair_ids(
        prompt_id,
        models,
        tau=rule.tau,
        delta=rule.delta,
        min_length_ratio=rule.min_length_ratio,
        table=read_table(profiles_path),
        superiority=superiority,
        lengths=lengths,
    )


def test_the_oracle_reads_the_table_as_worked_out_by_hand() -> None:
    table = read_table()
    assert len(table.vectors) == 16
    assert [round(x, 4) for x in table.vector("llama-2-13b-chat")] == [
        0.0115,
        0.5185,
        0.2608,
        0.6639,
        0.6915,
        0.5605,
    ]
    for model, superiority in HAND_SUPERIORITY.items():
        assert table.superiority(model) == pytest.approx(superiority, abs=5e-5), model
    for low, high, similarity, gap in HAND_NEIGHBOURS:
        assert table.similarity(low, high) == pytest.approx(similarity, abs=5e-5), (low, high)
        assert table.superiority(high) - table.superiority(low) == pytest.approx(gap, abs=5e-5), (low, high)


def test_default_pool_kin_pairs_are_the_hand_worked_ones() -> None:
    assert DEFAULTS.tau == 0.95 and DEFAULTS.delta == 0.15  # the thresholds the pairs above assume
    oracle = kin_model_pairs(POOL, tau=DEFAULTS.tau, delta=DEFAULTS.delta)
    assert oracle == DEFAULT_POOL_KIN
    # The pipeline's code, through the path the rating stage takes (make_pairs, lengths from the
    # answers' words), picks the same two pairs with the same ids.
    gathered = Gathered(
        prompt_id="p-default",
        prompt_text="Why?",
        responses={
            m: {"response_id": response_id_for("p-default", m), "text": f"answer of {m}", "simulated": True}
            for m in POOL
        },
    )
    picked = make_pairs(gathered, load_profiles(), DEFAULTS.rule())
    assert {(p.response_a.model, p.response_b.model) for p in picked} == {(p.low, p.high) for p in oracle}
    assert {p.pair_id for p in picked} == oracle_pair_ids("p-default", POOL, DEFAULTS.rule())
    assert len(oracle_pair_ids("p-default", POOL, DEFAULTS.rule())) == 2


@pytest.mark.parametrize(
    ("tau", "delta"),
    [(0.95, 0.15), (0.9, 0.2), (0.98, 0.05), (0.95, 0.0001), (0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)],
)
def test_oracle_and_pipeline_agree_on_the_whole_table(tau: float, delta: float) -> None:
    models = list(read_table().vectors)
    rule = KinRule(tau, delta)
    assert oracle_pair_ids("p-all", models, rule) == pipeline_pair_ids("p-all", models, rule)


def test_oracle_and_pipeline_agree_on_random_pools_thresholds_competencies_and_lengths() -> None:
    models = [*read_table().vectors, "brand-new-model"]  # no profile: the table's mean vector
    rng = random.Random(19)
    sizes: set[int] = set()
    for case in range(300):
        pool = rng.sample(models, rng.randint(2, 9))
        rule = KinRule(rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.35), rng.choice([0.0, 0.25, 0.6]))
        # Every third case: the superiority a worker with online competency may hold instead.
        superiority = {m: rng.random() for m in pool} if case % 3 == 0 else None
        lengths = {m: rng.randint(1, 200) for m in pool} if case % 2 == 0 else None
        prompt_id = f"p-{case}"
        given = {"superiority": superiority, "lengths": lengths}
        expected = oracle_pair_ids(prompt_id, pool, rule, **given)
        assert expected == pipeline_pair_ids(prompt_id, pool, rule, **given), (pool, rule, given)
        sizes.add(len(expected))
    # The cases are not all trivial: some yield no pair, some one, some several.
    assert {0, 1, 2} <= sizes


def test_oracle_and_pipeline_agree_on_a_table_with_missing_cells_and_ties(tmp_path: Path) -> None:
    table = tmp_path / "profiles.csv"
    table.write_text(
        "model,a,b,c\n"
        "m1,10,20,30\n"
        "m2,12,,33\n"  # a missing cell: the column's mean normalised score
        "m3,NA,25,29\n"
        "m4,40,50,60\n"
        "m5,11,21,31\n"
    )
    # Two models with no row share the mean vector: equal superiority, ordered by response id.
    pool = ["m1", "m2", "m3", "m4", "m5", "new-a", "new-b"]
    for tau, delta in [(0.95, 0.15), (0.99, 0.05), (0.5, 0.5)]:
        rule = KinRule(tau, delta)
        expected = oracle_pair_ids("p-t", pool, rule, table)
        assert expected == pipeline_pair_ids("p-t", pool, rule, table)
    assert expected  # the loose thresholds pair something
