"""The verifier judge: each answer checked against the prompt's reference; the right one wins, both
or neither right is a tie, and a prompt without a reference (or a scorer that fails) is a dead
letter naming the prompt, never a guess. Through `judge_batch`, as the judging stage runs it."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from karma.agents.backends import (
    BACKENDS,
    JUDGE_BACKENDS,
    BackendError,
    JudgeRequest,
    ModelLoadError,
    make_judge,
)
from karma.agents.backends.verifier import VerifierJudge, verifier_winner
from karma.agents.judging import requests_for, scores_of
from karma.schemas.models import KinPair, Preference, Winner
from karma.streams.codecs import decode, encode
from karma.streams.config import JudgeSettings, KarmaSettings
from tests import records
from tests.agents.test_judging import RecordingOutbox, judged

HERE = __name__  # this module, importable as a scorer's module


def starts_with_reference(answer: str, reference: str) -> float:
    """A user's own scorer (module:function): right when the answer starts with the reference."""
    return float(answer.startswith(reference))


def half_marks(answer: str, reference: str) -> float:
    return 0.5


def explodes(answer: str, reference: str) -> float:
    raise ZeroDivisionError("a bug in the user's scorer")


def _pair(text_a: str, text_b: str, metadata: dict[str, str] | None, prompt_id: str = "p-v") -> KinPair:
    return records.kin_pair(
        prompt_id,
        records.candidate("model-a", f"r-a-{prompt_id}", text=text_a),
        records.candidate("model-b", f"r-b-{prompt_id}", text=text_b),
        pair_id=f"pair-{prompt_id}",
        prompt_text="What is 6 x 7?",
        prompt_metadata=metadata,
    )


def _verified(pair: KinPair, default_scorer: str = "exact") -> RecordingOutbox:
    return judged(VerifierJudge(default_scorer), pair)


def _preference(pair: KinPair, default_scorer: str = "exact") -> Preference:
    outbox = _verified(pair, default_scorer)
    assert not outbox.letters, outbox.letters
    [preference] = outbox.preferences()
    return preference


@pytest.mark.parametrize(
    ("text_a", "text_b", "winner", "scores"),
    [
        ("42", "41", Winner.A, (1.0, 0.0)),
        ("41", "42", Winner.B, (0.0, 1.0)),
        ("42", " 42 ", Winner.TIE, (1.0, 1.0)),  # both right
        ("40", "41", Winner.TIE, (0.0, 0.0)),  # both wrong
    ],
)
def test_the_right_answer_wins_and_both_or_neither_right_is_a_tie(
    text_a: str, text_b: str, winner: Winner, scores: tuple[float, float]
) -> None:
    preference = _preference(_pair(text_a, text_b, {"reference": "42"}))
    assert preference.winner is winner and preference.consistent
    assert preference.verdict_ab is winner and preference.verdict_ba is winner
    assert (preference.score_a, preference.score_b) == scores
    assert preference.judge == "verifier"
    assert preference.confidence == (0.5 if winner is Winner.TIE else 1.0)
    assert preference.soft_label is None
    assert decode(encode(preference), Preference) == preference  # the scores travel


def test_the_scorer_named_in_the_prompts_metadata_is_used() -> None:
    pair = _pair("The answer is 42.", "It is 41.", {"reference": "42", "scorer": "numeric"})
    preference = _preference(pair)  # the default `exact` would call both wrong
    assert preference.winner is Winner.A and (preference.score_a, preference.score_b) == (1.0, 0.0)


def test_the_judges_default_scorer_serves_a_prompt_that_names_none() -> None:
    pair = _pair("It is forty-two, 42.", "No idea.", {"reference": "42"})
    assert _preference(pair, default_scorer="exact").winner is Winner.TIE  # neither exactly "42"
    contains = _preference(pair, default_scorer="contains")
    assert contains.winner is Winner.A and contains.score_a == 1.0


def test_a_users_own_scorer_by_module_and_function() -> None:
    pair = _pair("42, because", "Because 42", {"reference": "42", "scorer": f"{HERE}:starts_with_reference"})
    preference = _preference(pair)
    assert preference.winner is Winner.A and (preference.score_a, preference.score_b) == (1.0, 0.0)
    # Half marks count as right: both answers are, so the pair is a tie with both scores kept.
    half = _preference(_pair("x", "y", {"reference": "42", "scorer": f"{HERE}:half_marks"}))
    assert half.winner is Winner.TIE and (half.score_a, half.score_b) == (0.5, 0.5)


@pytest.mark.parametrize("metadata", [None, {"skill": "arithmetic"}, {"reference": "  "}])
def test_a_prompt_without_a_reference_is_a_letter_naming_it_never_a_guess(
    metadata: dict[str, str] | None,
) -> None:
    pair = _pair("42", "41", metadata, prompt_id="p-noref")
    outbox = _verified(pair)
    assert outbox.preferences() == []
    [letter] = outbox.letters
    assert letter["event"] == "event-pair-p-noref"  # on the pair's message: it settles exactly that pair
    assert letter["error_type"] == "no_reference" and letter["prompt_id"] == "p-noref"
    assert letter["models"] == ("model-a", "model-b")
    assert letter["reason"].startswith("pair pair-p-noref: prompt p-noref has no reference")


@pytest.mark.parametrize(
    ("scorer", "why"),
    [
        ("numeric", "holds no number"),  # a built-in scorer that refuses the reference
        ("no-such-scorer", "unknown scorer"),
        ("tests.nowhere:score", "cannot import"),
        (f"{HERE}:explodes", "raised ZeroDivisionError: a bug in the user's scorer"),
    ],
)
def test_a_scorer_that_fails_is_a_letter_naming_the_prompt(scorer: str, why: str) -> None:
    outbox = _verified(_pair("42", "41", {"reference": "forty-two", "scorer": scorer}, prompt_id="p-bad"))
    assert outbox.preferences() == []
    [letter] = outbox.letters
    assert letter["error_type"] == "scorer" and letter["prompt_id"] == "p-bad"
    assert letter["models"] == ("model-a", "model-b")
    assert "prompt p-bad" in letter["reason"] and why in letter["reason"]


def test_the_rule_and_the_scores_of_both_passes() -> None:
    assert verifier_winner(1.0, 0.0) == "A" and verifier_winner(0.0, 1.0) == "B"
    assert verifier_winner(1.0, 1.0) == verifier_winner(0.0, 0.49) == "tie"
    # The second pass saw B first: its scores are swapped back.
    assert scores_of((1.0, 0.0), (0.0, 1.0)) == {"score_a": 1.0, "score_b": 0.0}
    assert scores_of(None, None) == {"score_a": None, "score_b": None}


def test_every_request_carries_the_prompts_id_and_metadata() -> None:
    pair = _pair("42", "41", {"reference": "42"})
    for request in requests_for(pair):
        assert request.prompt_id == "p-v" and dict(request.metadata) == {"reference": "42"}
    # Not part of the fence tag: an LLM judge's prompt is the same with or without metadata.
    bare = requests_for(pair.model_copy(update={"prompt_metadata": {}}))
    assert [r.tag for r in bare] == [r.tag for r in requests_for(pair)]
    reply = asyncio.run(VerifierJudge().judge([JudgeRequest("x", "q", "a", "b", "m1", "m2")]))
    assert isinstance(reply[0], BackendError) and reply[0].kind == "no_reference"


def test_registered_as_a_judge_only_backend_built_from_the_settings() -> None:
    assert "verifier" in JUDGE_BACKENDS and not BACKENDS["verifier"].generates
    judge = make_judge(KarmaSettings(judge=JudgeSettings(backend="verifier")))
    assert isinstance(judge, VerifierJudge) and judge.default_scorer == "exact" and judge.name == "verifier"
    own = make_judge(KarmaSettings(judge=JudgeSettings(backend="verifier", scorer=f"{HERE}:half_marks")))
    assert isinstance(own, VerifierJudge) and own.default_scorer == f"{HERE}:half_marks"


def test_a_bad_default_scorer_is_a_config_error_or_stops_the_judge_at_build() -> None:
    with pytest.raises(ValidationError, match="unknown scorer 'exactly'"):
        JudgeSettings(backend="verifier", scorer="exactly")
    # module:function is checked for its shape at load, and imported when the judge is built.
    settings = KarmaSettings(judge=JudgeSettings(backend="verifier", scorer="tests.nowhere:score"))
    with pytest.raises(ModelLoadError, match="judge.scorer 'tests.nowhere:score': .*cannot import") as info:
        make_judge(settings)
    assert "\n" not in str(info.value)  # one line: the worker prints it and exits (code 3)


CALLS: list[str] = []


def counting(answer: str, reference: str) -> float:
    CALLS.append(answer)
    return float(answer == reference)


def test_each_answer_is_scored_once_though_both_passes_show_it() -> None:
    CALLS.clear()
    pair = _pair("42", "41", {"reference": "42", "scorer": f"{HERE}:counting"})
    assert _preference(pair).winner is Winner.A
    assert sorted(CALLS) == ["41", "42"]  # two passes, two answers: each scored once
