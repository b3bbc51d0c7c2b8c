"""The ZEBRA labeller: the more superior model's response wins, equal superiority is a tie, and a
request without superiority is an error, never a guess."""

from __future__ import annotations

import asyncio
import math

import pytest

from karma.agents.backends import BackendError, JudgeReply, JudgeRequest, make_judge
from karma.agents.backends.zebra import ZebraJudge, zebra_winner
from karma.agents.judge_prompt import parse_verdict
from karma.agents.judging import requests_for, resolve_pair
from karma.schemas.models import Candidate, KinPair, Preference, Winner
from karma.streams.config import JudgeSettings, KarmaSettings
from tests import records


def _pair(sup_a: float, sup_b: float, simulated: bool = True) -> KinPair:
    def candidate(side: str, superiority: float) -> Candidate:
        return records.candidate(
            f"model-{side}", f"r-{side}", text=f"answer {side}", superiority=superiority, simulated=simulated
        )

    return records.kin_pair(
        "p-z",
        candidate("a", sup_a),
        candidate("b", sup_b),
        pair_id="pair-z",
        prompt_text="q",
        gap=abs(sup_a - sup_b),
    )


def _request(first: float | None, second: float | None) -> JudgeRequest:
    return JudgeRequest(
        "pair-z", "q", "x", "y", "m1", "m2", 0, first_superiority=first, second_superiority=second
    )


def _judge(requests: list[JudgeRequest]) -> list[JudgeReply | BackendError]:
    return asyncio.run(ZebraJudge().judge(requests))


def test_the_more_superior_model_wins_in_either_order() -> None:
    assert zebra_winner(0.612, 0.548) == "A"
    assert zebra_winner(0.548, 0.612) == "B"  # swapped: the same model still wins
    assert zebra_winner(0.0, 1.0) == "B"


def test_only_exactly_equal_superiority_is_a_tie() -> None:
    assert zebra_winner(0.5, 0.5) == "tie"
    assert zebra_winner(0.5, 0.5 + 1e-12) == "B"  # no tolerance: a decided pair stays decided


def test_a_non_finite_superiority_has_no_order() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            zebra_winner(bad, 0.5)


def test_a_verdict_names_both_superiorities_and_is_valid_json() -> None:
    decided, tie = _judge([_request(0.612, 0.548), _request(0.5, 0.5)])
    assert isinstance(decided, JudgeReply) and isinstance(tie, JudgeReply)
    assert (decided.verdict.winner, decided.verdict.confidence) == ("A", 1.0)
    assert decided.verdict.rationale == "zebra: superiority 0.612 (shown first) vs 0.548 (shown second)"
    assert (tie.verdict.winner, tie.verdict.confidence) == ("tie", 0.5)
    for reply in (decided, tie):
        assert parse_verdict(reply.raw) == reply.verdict  # raw is the verdict's JSON
        assert reply.p_first is None and reply.simulated is False  # a rule, not a simulation


def test_close_superiorities_are_printed_in_full_rather_than_as_a_tie() -> None:
    (reply,) = _judge([_request(0.5, 0.5000001)])
    assert isinstance(reply, JudgeReply) and reply.verdict.winner == "B"
    assert "0.5 (shown first) vs 0.5000001" in reply.verdict.rationale


def test_a_request_without_superiority_is_an_error_not_a_guess() -> None:
    missing_second, missing_both, nan, fine = _judge(
        [_request(0.6, None), _request(None, None), _request(math.nan, 0.5), _request(0.6, 0.4)]
    )
    assert isinstance(missing_second, BackendError) and missing_second.kind == "backend"
    assert "superiority" in missing_second.reason and "shown second (m2)" in missing_second.reason
    assert isinstance(missing_both, BackendError) and "first and second (m1, m2)" in missing_both.reason
    assert isinstance(nan, BackendError) and "shown first (m1)" in nan.reason
    assert isinstance(fine, JudgeReply) and fine.verdict.winner == "A"  # one bad request sinks nothing else


@pytest.mark.parametrize("name", [None, "my-judge"])
def test_make_judge_builds_zebra_and_it_is_always_called_zebra(name: str | None) -> None:
    judge_settings = (
        JudgeSettings(backend="zebra") if name is None else JudgeSettings(backend="zebra", name=name)
    )
    judge = make_judge(KarmaSettings(judge=judge_settings))
    assert isinstance(judge, ZebraJudge)
    assert judge.backend == "zebra" and judge.name == "zebra"
    asyncio.run(judge.close())


def test_the_environment_switches_the_judge_to_zebra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARMA_JUDGE__BACKEND", "zebra")
    assert isinstance(make_judge(KarmaSettings()), ZebraJudge)


def _preference_of(pair: KinPair) -> tuple[Preference, JudgeReply, JudgeReply]:
    judge = make_judge(KarmaSettings(judge=JudgeSettings(backend="zebra")))
    first, second = asyncio.run(judge.judge(requests_for(pair)))
    assert isinstance(first, JudgeReply) and isinstance(second, JudgeReply)
    return resolve_pair(pair, first, second, judge.name), first, second


@pytest.mark.parametrize(("sup_a", "sup_b", "winner"), [(0.548, 0.612, Winner.B), (0.612, 0.548, Winner.A)])
def test_both_passes_choose_the_more_superior_models_response(
    sup_a: float, sup_b: float, winner: Winner
) -> None:
    pair = _pair(sup_a, sup_b)
    preference, first, second = _preference_of(pair)
    # The second pass shows B first, so the raw winners are opposite letters for the same response.
    assert {first.verdict.winner, second.verdict.winner} == {"A", "B"}
    assert preference.winner is winner and preference.consistent
    assert preference.verdict_ab is preference.verdict_ba is winner
    better = pair.response_b if sup_b > sup_a else pair.response_a
    assert preference.chosen == better and preference.chosen.superiority == max(sup_a, sup_b)
    assert preference.confidence == 1.0 and preference.judge == "zebra"
    assert preference.simulated  # zebra is no simulation, but the responses were
    assert preference.gap == pytest.approx(abs(sup_a - sup_b))
    assert preference.response_a.superiority == sup_a and preference.response_b.superiority == sup_b


def test_equal_superiority_is_a_consistent_tie_and_real_responses_stay_real() -> None:
    preference, _, _ = _preference_of(_pair(0.5, 0.5, simulated=False))
    assert preference.winner is Winner.TIE and preference.consistent
    assert preference.confidence == 0.5 and preference.to_trl() is None
    assert not preference.simulated
