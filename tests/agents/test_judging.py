"""The judging stage asks twice, in both orders, and resolves the two verdicts: `judge_batch`,
what the judging agent runs per batch, with the simulated judge and an outbox that records."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from karma.agents.backends import BackendError, JudgeReply, JudgeRequest
from karma.agents.backends.simulated import SimulatedJudge, SimulatedJudgeBackend
from karma.agents.judging import judge_batch
from karma.schemas.models import KinPair, Preference, Winner
from karma.streams.codecs import decode
from tests import records


class RecordingOutbox:
    """What judge_batch sends: preferences (with their publish arguments) and dead letters."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.letters: list[dict[str, Any]] = []

    async def publish(self, short: str, key: str, value: bytes, **kwargs: Any) -> None:
        self.published.append((short, key, value, kwargs))

    async def dead_letter(self, event: Any, **kwargs: Any) -> None:
        self.letters.append({"event": event, **kwargs})

    def preferences(self) -> list[Preference]:
        return [decode(value, Preference) for short, _, value, _ in self.published if short == "preferences"]


def judged(judge: Any, *pairs: KinPair) -> RecordingOutbox:
    """One batch of pairs (each with a stand-in event) through judge_batch."""
    outbox = RecordingOutbox()
    batch = [(f"event-{pair.pair_id}", pair) for pair in pairs]
    asyncio.run(judge_batch(judge, batch, outbox, seed=0))  # type: ignore[arg-type]
    return outbox


def judge_pair(judge: SimulatedJudge, pair: KinPair) -> Preference:
    """The simulated judge's preference on one pair, as the stage makes it."""
    [preference] = judged(SimulatedJudgeBackend(judge), pair).preferences()
    return preference


def _pair(i: int, sup_a: float = 0.5, sup_b: float = 0.5, simulated: bool = True) -> KinPair:
    return records.kin_pair(
        f"p-{i}",
        records.candidate("a", f"r-a{i}", text="x", superiority=sup_a, simulated=simulated),
        records.candidate("b", f"r-b{i}", text="y", superiority=sup_b, simulated=simulated),
        pair_id=f"pair-{i}",
        prompt_text="q",
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


def test_a_batch_is_judged_in_one_call_and_each_preference_names_its_pairs_models() -> None:
    seen: list[int] = []

    class Counting(SimulatedJudgeBackend):
        async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
            seen.append(len(requests))
            return await super().judge(requests)

    outbox = judged(Counting(SimulatedJudge({"a": 0.5, "b": 0.5})), _pair(1), _pair(2), _pair(3))
    assert seen == [6]  # both orders of every pair, at once
    assert [p.pair_id for p in outbox.preferences()] == ["pair-1", "pair-2", "pair-3"]
    for _, key, _, kwargs in outbox.published:
        # A preference the broker refuses is replaced by a letter on its pair's message, naming both models.
        assert key.startswith("p-") and kwargs["models"] == ("a", "b")
        assert kwargs["cause"] == f"event-{kwargs['record_id']}"
    assert not outbox.letters


def test_a_pass_that_failed_for_good_dead_letters_the_pair_with_its_two_models() -> None:
    class FailsOnPair2(SimulatedJudgeBackend):
        async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
            replies = await super().judge(requests)
            return [
                BackendError("no valid verdict in 3 attempt(s)", kind="invalid_verdict")
                if r.pair_id == "pair-2" and r.first_model == "b"
                else reply
                for r, reply in zip(requests, replies, strict=True)
            ]

    outbox = judged(FailsOnPair2(SimulatedJudge({"a": 0.5, "b": 0.5})), _pair(1), _pair(2))
    assert [p.pair_id for p in outbox.preferences()] == ["pair-1"]  # the rest of the batch goes on
    [letter] = outbox.letters
    assert letter["event"] == "event-pair-2" and letter["prompt_id"] == "p-2"
    assert letter["error_type"] == "invalid_verdict" and letter["models"] == ("a", "b")
    assert letter["reason"] == "pair pair-2: no valid verdict in 3 attempt(s)"


def test_the_soft_label_averages_both_orders_in_a_terms() -> None:
    from karma.agents.judging import soft_label_of

    assert soft_label_of(0.8, 0.4) == pytest.approx(0.7)  # 0.8 and 1 - 0.4, averaged
    assert soft_label_of(None, 0.4) == pytest.approx(0.6)
    assert soft_label_of(None, None) is None


def test_resolve_pair_keeps_both_raw_verdicts_and_the_soft_label() -> None:
    from karma.agents.backends import JudgeReply
    from karma.agents.judge_prompt import RawVerdict
    from karma.agents.judging import resolve_pair

    first = JudgeReply(RawVerdict(winner="A", confidence=0.9), "{}", 0.9, simulated=False)
    second = JudgeReply(RawVerdict(winner="A", confidence=0.7), "{}", 0.6, simulated=False)
    pref = resolve_pair(_pair(1, simulated=False), first, second, "judge-x")
    # Each pass picked the answer shown first: order-dependent, so a tie, never a guess.
    assert (pref.verdict_ab, pref.verdict_ba, pref.winner) == (Winner.A, Winner.B, Winner.TIE)
    assert not pref.consistent and pref.confidence == 0.5 and not pref.simulated
    assert pref.soft_label == pytest.approx((0.9 + 0.4) / 2)


def test_a_real_judge_on_simulated_responses_still_makes_simulated_data() -> None:
    from karma.agents.backends import JudgeReply
    from karma.agents.judge_prompt import RawVerdict
    from karma.agents.judging import resolve_pair

    real = JudgeReply(RawVerdict(winner="A", confidence=0.9), "{}", None, simulated=False)
    assert resolve_pair(_pair(2, simulated=True), real, real, "judge-x").simulated
    one_simulated = _pair(2, simulated=False)
    one_simulated = one_simulated.model_copy(
        update={"response_b": one_simulated.response_b.model_copy(update={"simulated": True})}
    )
    assert resolve_pair(one_simulated, real, real, "judge-x").simulated
    simulated_judge = JudgeReply(RawVerdict(winner="A", confidence=0.9), "{}", None, simulated=True)
    assert resolve_pair(_pair(2, simulated=False), real, simulated_judge, "judge-x").simulated


def test_both_passes_carry_the_superiority_of_the_model_shown_first_and_second() -> None:
    from dataclasses import replace

    from karma.agents.judging import requests_for

    ab, ba = requests_for(_pair(3, sup_a=0.612, sup_b=0.548), seed=7)
    assert (ab.first_model, ab.first_superiority, ab.second_model, ab.second_superiority) == (
        "a",
        0.612,
        "b",
        0.548,
    )
    assert (ba.first_model, ba.first_superiority, ba.second_model, ba.second_superiority) == (
        "b",
        0.548,
        "a",
        0.612,
    )
    assert (ab.first_text, ba.first_text) == ("x", "y") and ab.seed == ba.seed == 7
    # LLM judges never see them: the fence tag (and so the prompt) is what it was without them.
    for request in (ab, ba):
        assert request.tag == replace(request, first_superiority=None, second_superiority=None).tag
