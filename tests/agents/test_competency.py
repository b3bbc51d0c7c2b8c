"""Online competency: verdict tallies, the Bradley-Terry fit, and its blend with the prior."""

from __future__ import annotations

import math

import pytest
from faust.windows import HoppingWindow
from hypothesis import given, settings
from hypothesis import strategies as st

from karma.agents.backends.zebra import ZebraJudge
from karma.agents.competency import (
    Tally,
    assess,
    fit_bradley_terry,
    is_evidence,
    kin_of,
    parent_of,
    player_of,
    pool_table,
    superiority_of,
    tally,
    version_of,
    window_of,
)
from karma.agents.kinship import KinRule, Profiles, load_profiles
from karma.schemas.models import Preference, Winner
from tests import records

SCALE = 0.1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _flat_profiles(models: list[str]) -> Profiles:
    """Every model at superiority 0.5 and identical direction: the prior knows nothing."""
    return Profiles(benchmarks=("x", "y"), vectors={m: (0.5, 0.5) for m in models})


def _expected_tallies(truth: dict[str, float], n: float) -> dict[tuple[str, str], Tally]:
    """What a judge following Bradley-Terry with these superiorities scores on average."""
    models = sorted(truth)
    return {
        (a, b): Tally(n, n * _sigmoid((truth[a] - truth[b]) / SCALE))
        for i, a in enumerate(models)
        for b in models[i + 1 :]
    }


def test_tally_counts_wins_ties_and_leaves_out_same_model_verdicts() -> None:
    tallies = tally(
        [
            ("b", "a", Winner.A),  # b beat a: stored under (a, b) as a score of 0 for a
            ("a", "b", Winner.TIE),
            ("a", "b", Winner.A),
            ("a", "a", Winner.A),
        ]
    )
    assert tallies == {("a", "b"): Tally(n=3, score_a=1.5)}


def test_the_fit_recovers_the_superiorities_that_generated_the_verdicts() -> None:
    truth = {"m1": 0.2, "m2": 0.4, "m3": 0.6, "m4": 0.8}  # mean 0.5, the flat prior's value
    fitted = fit_bradley_terry(_expected_tallies(truth, n=10_000), dict.fromkeys(truth, 0.5), SCALE)
    for model, value in truth.items():
        assert fitted[model] == pytest.approx(value, abs=1e-3)


def test_without_evidence_every_model_keeps_its_prior() -> None:
    profiles = load_profiles()
    assessed = assess(["gpt-4", "vicuna-33b"], profiles, {}, evidence=20, scale=SCALE)
    for model, c in assessed.items():
        assert c.online is None and c.comparisons == 0 and c.weight == 0
        assert c.blended == c.prior == profiles.superiority(model)


def test_evidence_equal_to_the_setting_weighs_online_and_prior_the_same() -> None:
    models = ["a", "b"]
    tallies = {("a", "b"): Tally(n=20, score_a=15)}
    assessed = assess(models, _flat_profiles(models), tallies, evidence=20, scale=SCALE)
    a = assessed["a"]
    assert a.comparisons == 20 and a.weight == pytest.approx(0.5)
    assert a.online is not None and a.online > 0.5 > assessed["b"].online  # type: ignore[operator]
    assert a.blended == pytest.approx((a.prior + a.online) / 2)


def test_a_model_with_no_profile_starts_at_the_pool_mean_and_climbs_into_new_kin() -> None:
    profiles = load_profiles()
    pool = ["gpt-4", "gpt-3.5-turbo", "llama-2-7b-chat", "pythia-12b", "newcomer"]
    mean = sum(profiles.superiority(m) for m in profiles.vectors) / len(profiles.vectors)
    rule = KinRule(tau=0.9, delta=0.15)

    before = assess(pool, profiles, {}, evidence=5, scale=SCALE)
    assert before["newcomer"].prior == pytest.approx(mean)
    kin_before = kin_of("newcomer", {m: c.blended for m, c in before.items()}, profiles, rule)

    # The newcomer beats gpt-3.5-turbo and ties gpt-4, over and over.
    tallies = tally([("newcomer", "gpt-3.5-turbo", Winner.A)] * 30 + [("gpt-4", "newcomer", Winner.TIE)] * 30)
    after = assess(pool, profiles, tallies, evidence=5, scale=SCALE)
    assert after["newcomer"].blended > profiles.superiority("gpt-3.5-turbo") > mean
    kin_after = kin_of("newcomer", {m: c.blended for m, c in after.items()}, profiles, rule)
    assert "gpt-4" in kin_after and "gpt-4" not in kin_before
    assert kin_after != kin_before


# --- versions: each checkpoint `karma train` writes is a player of its own ---------------------


def test_a_version_is_named_apart_from_its_model_and_version_1_keeps_the_bare_name() -> None:
    assert player_of("lab-m", 1) == "lab-m" and player_of("lab-m", 3) == "lab-m@v3"
    for player in ("lab-m", "lab-m@v2", "org/model:7b@v12"):
        assert player_of(*version_of(player)) == player
    assert version_of("lab-m@v1") == ("lab-m@v1", 1)  # not a name player_of writes
    assert (
        parent_of("lab-m@v3") == "lab-m@v2"
        and parent_of("lab-m@v2") == "lab-m"
        and parent_of("lab-m") is None
    )


def _graded_profiles() -> Profiles:
    """Three models of one shape (similarity 1) at superiority 0.3, 0.45 and 0.75."""
    return Profiles(
        benchmarks=("x", "y"), vectors={"low": (0.3, 0.3), "mid": (0.45, 0.45), "high": (0.75, 0.75)}
    )


def test_a_new_version_starts_from_its_parents_blended_superiority() -> None:
    profiles = _graded_profiles()
    # Version 1 of `low` beat `mid` often: its blended value is above its profile's.
    tallies = tally([("low", "mid", Winner.A)] * 20)
    assessed = assess(["low", "mid", "high", "low@v2"], profiles, tallies, evidence=20, scale=SCALE)
    low, v2 = assessed["low"], assessed["low@v2"]
    assert low.blended > low.prior == pytest.approx(0.3)
    assert v2.comparisons == 0 and v2.online is None
    assert v2.prior == v2.blended == pytest.approx(low.blended)  # where its parent stands
    # A version not assessed at all (pairing meets it before a refresh) scores as its nearest ancestor.
    current = {m: c.blended for m, c in assessed.items()}
    assert superiority_of("low", 4, current, profiles) == current["low@v2"]
    assert superiority_of("high", 2, {}, profiles) == profiles.superiority("high")


def test_a_version_moves_with_its_own_verdicts_and_the_kin_set_follows() -> None:
    profiles = _graded_profiles()
    rule = KinRule(tau=0.9, delta=0.16)
    pool = ["low", "mid", "high"]
    before = {m: c.blended for m, c in assess(pool, profiles, {}, evidence=5, scale=SCALE).items()}
    assert kin_of("low", before, profiles, rule) == ["mid"]

    # Version 2 of `low` beats `mid` and ties `high`, over and over; version 1 keeps its record.
    verdicts = [("low@v2", "mid", Winner.A)] * 30 + [("high", "low@v2", Winner.TIE)] * 30
    assessed = assess([*pool, "low@v2"], profiles, tally(verdicts), evidence=5, scale=SCALE)
    after = {m: c.blended for m, c in assessed.items()}
    assert after["low@v2"] > profiles.superiority("mid") and after["low"] == before["low"]
    assert kin_of("low@v2", after, profiles, rule) == ["high"]
    assert kin_of("low", after, profiles, rule) == ["mid"]  # versions of one model are never kin
    assert "low@v2" in kin_of("high", after, profiles, rule)

    # `karma competency` shows the version as a row of its own.
    rows = {r["model"]: r for r in pool_table(pool, profiles, rule, tally(verdicts), evidence=5, scale=SCALE)}
    assert rows["low@v2"]["version"] == 2 and rows["low@v2"]["has_profile"]
    assert rows["low@v2"]["kin"] == ["high"] and rows["low"]["version"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")).filter(lambda k: k[0] < k[1]),
        st.tuples(st.integers(1, 50), st.floats(0, 1)),
        max_size=6,
    ),
    st.floats(0.1, 100),
)
def test_estimates_stay_within_the_superiority_range(raw: dict, evidence: float) -> None:  # type: ignore[type-arg]
    tallies = {key: Tally(n, n * share) for key, (n, share) in raw.items()}
    profiles = Profiles(
        benchmarks=("x", "y"),
        vectors={"a": (0.0, 0.0), "b": (1.0, 0.2), "c": (0.3, 1.0), "d": (1.0, 1.0)},
    )
    for c in assess("abcd", profiles, tallies, evidence=evidence, scale=SCALE).values():
        assert 0.0 <= c.blended <= 1.0
        assert c.online is None or 0.0 <= c.online <= 1.0
        assert 0.0 <= c.weight < 1.0
        # The blend lies between the prior and the online estimate.
        if c.online is not None:
            assert min(c.prior, c.online) - 1e-12 <= c.blended <= max(c.prior, c.online) + 1e-12


@settings(max_examples=300, deadline=None)
@given(
    st.floats(1e6, 2e9, allow_nan=False),
    st.integers(1, 600),
    st.integers(1, 600),
)
def test_the_window_is_fausts_oldest_hopping_window_holding_now(now: float, size: int, step: int) -> None:
    step = min(step, size)
    start, end = window_of(now, size, step)
    assert start <= now < end and end - start == size
    assert (start, start + size - 0.1) == HoppingWindow(size, step).earliest(now)


def _verdict(model_a: str, model_b: str, judge: str) -> Preference:
    return records.preference(
        "p-1",
        records.candidate(model_a, text="x", superiority=0.4),
        records.candidate(model_b, text="x", superiority=0.6),
        Winner.B,
        pair_id="pair-1",
        prompt_text="q",
        gap=0.2,
        confidence=1.0,
        judge=judge,
    )


def test_only_verdicts_of_a_judge_that_read_the_answers_are_evidence() -> None:
    assert is_evidence(_verdict("a", "b", "simulated-judge"))
    assert not is_evidence(_verdict("a", "a", "simulated-judge"))  # one model against itself
    # zebra reads the superiority it would be evidence for: counting it would be circular.
    assert not is_evidence(_verdict("a", "b", ZebraJudge.name))
