"""The judging stage asks twice, in both orders, and resolves the two verdicts."""

from __future__ import annotations

from karma.agents.judging import judge_pair
from karma.agents.simulated import SimulatedJudge
from karma.schemas.models import Candidate, KinPair, Winner


def _pair(i: int) -> KinPair:
    return KinPair(
        pair_id=f"pair-{i}",
        prompt_id=f"p-{i}",
        prompt_text="q",
        response_a=Candidate(response_id=f"r-a{i}", model="a", text="x", superiority=0.5, simulated=True),
        response_b=Candidate(response_id=f"r-b{i}", model="b", text="y", superiority=0.5, simulated=True),
        policy="kin",
        similarity=0.99,
        gap=0.0,
    )


def test_a_judge_that_always_picks_the_first_shown_yields_inconsistent_ties() -> None:
    judge = SimulatedJudge({"a": 0.5, "b": 0.5}, position_bias=50.0)
    for i in range(20):
        pref = judge_pair(judge, _pair(i))
        assert (pref.verdict_ab, pref.verdict_ba) == (Winner.A, Winner.B)
        assert pref.winner is Winner.TIE and not pref.consistent
        assert pref.confidence == 0.5


def test_a_clear_quality_gap_gives_consistent_wins() -> None:
    judge = SimulatedJudge({"a": 0.1, "b": 0.9}, position_bias=0.0, temperature=0.05)
    for i in range(20):
        pref = judge_pair(judge, _pair(i))
        assert pref.winner is Winner.B and pref.consistent
        assert pref.preference_id == pref.pair_id == f"pair-{i}"
        assert pref.simulated and pref.judge == "simulated-judge"


def test_length_bias_favours_the_longer_answer_in_both_orders() -> None:
    judge = SimulatedJudge({"a": 0.5, "b": 0.5}, position_bias=0.0, length_bias=20.0)
    long_b = _pair(0).model_copy(
        update={"response_b": _pair(0).response_b.model_copy(update={"text": "a much longer answer here"})}
    )
    pref = judge_pair(judge, long_b)
    assert pref.winner is Winner.B and pref.consistent
