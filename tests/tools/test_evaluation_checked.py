"""`karma eval` against the checked truth: where prompts carry a reference, each labeller (the
configured judge, zebra) is scored on the pairs with exactly one right answer, by the rule the
verifier judge applies. Hand-built preferences whose figures are worked out here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from karma.schemas.models import Candidate, Preference, Prompt, Winner
from karma.tools.evaluation.metrics import checked_accuracy, reference_truth, summarise
from karma.tools.evaluation.report import write_report
from karma.tools.evaluation.runner import checked_truth
from tests import records

REFERENCES = {
    "q1": {"reference": "42"},  # exact (the default scorer)
    "q2": {"reference": "42", "scorer": "numeric"},
    "q3": {"skill": "arithmetic"},  # no reference
    "q4": {"reference": "42", "scorer": "numeric"},
}


def pref(
    pid: str, prompt: str, texts: tuple[str, str], winner: Winner, superiority: tuple[float, float]
) -> Preference:
    def candidate(side: str, text: str, sup: float) -> Candidate:
        return records.candidate(f"m-{side}", f"r-{pid}-{side}", text=text, superiority=sup)

    a, b = (candidate(side, t, s) for side, t, s in zip("ab", texts, superiority, strict=True))
    return records.preference(prompt, a, b, winner, pair_id=pid, prompt_text="What is 6 x 7?")


# By hand (truth: the answer right by the prompt's reference when exactly one is):
#   x1 q1 "42" vs "41": truth A; judge A (right); zebra B (b more superior: wrong)
#   x2 q2 "It is 41" vs "The answer: 42": truth B; judge A (wrong); zebra B (right)
#   x3 q2 "42" vs "42.0": both right, no truth; judge A and zebra A are not counted
#   x4 q3 no reference: no truth
#   x5 q4 "42" vs "41": truth A; judge TIE (not a label); zebra A (right)
#   x6 q1 "41" vs "42": truth B; judge B (right); zebra: equal superiority, a tie
PREFERENCES = [
    pref("x1", "q1", ("42", "41"), Winner.A, (0.4, 0.6)),
    pref("x2", "q2", ("It is 41", "The answer: 42"), Winner.A, (0.4, 0.6)),
    pref("x3", "q2", ("42", "42.0"), Winner.A, (0.6, 0.4)),
    pref("x4", "q3", ("42", "41"), Winner.A, (0.6, 0.4)),
    pref("x5", "q4", ("42", "41"), Winner.TIE, (0.6, 0.4)),
    pref("x6", "q1", ("41", "42"), Winner.B, (0.5, 0.5)),
]


def test_the_checked_truth_is_the_answer_right_by_the_reference_when_exactly_one_is() -> None:
    truth = reference_truth(REFERENCES, "exact")
    assert [truth(p) for p in PREFERENCES] == [Winner.A, Winner.B, None, None, Winner.A, Winner.B]
    # The default scorer serves a prompt that names none: with `contains`, only "42" holds "2".
    assert reference_truth({"q1": {"reference": "2"}}, "contains")(PREFERENCES[0]) is Winner.A
    assert reference_truth({"q1": {"reference": "4"}}, "contains")(PREFERENCES[0]) is None  # both right


def test_a_scorer_that_fails_gives_no_truth() -> None:
    broken = reference_truth({"q1": {"reference": "forty-two", "scorer": "numeric"}}, "exact")
    assert broken(PREFERENCES[0]) is None  # the verifier letters such a pair: nothing to compare
    unknown = reference_truth({"q1": {"reference": "42", "scorer": "tests.nowhere:f"}}, "exact")
    assert unknown(PREFERENCES[0]) is None


def test_each_labeller_is_scored_on_the_pairs_with_a_checked_truth() -> None:
    s = summarise("kin", 4, PREFERENCES, None, reference_truth(REFERENCES, "exact"))
    assert s.checked_pairs == 4  # x1, x2, x5, x6
    # The judge's non-tie labels with a truth: x1 right, x2 wrong, x6 right (x5 is a tie).
    assert (s.checked_accuracy, s.checked_accuracy_n) == (pytest.approx(2 / 3), 3)
    # Zebra's: x1 wrong, x2 right, x5 right (x6 is a zebra tie).
    assert (s.zebra_checked_accuracy, s.zebra_checked_accuracy_n) == (pytest.approx(2 / 3), 3)
    without = summarise("kin", 4, PREFERENCES, None)
    assert (
        without.checked_pairs == 0
        and without.checked_accuracy is None
        and without.zebra_checked_accuracy is None
    )


def test_checked_accuracy_counts_only_labels_with_a_truth() -> None:
    truth = reference_truth(REFERENCES, "exact")
    assert checked_accuracy([PREFERENCES[2], PREFERENCES[3]], truth) == (None, 0)
    assert checked_accuracy([PREFERENCES[0]], truth) == (1.0, 1)


def test_the_runner_checks_only_where_prompts_carry_references() -> None:
    plain = [
        Prompt(prompt_id="q1", text="Why?"),
        Prompt(prompt_id="q2", text="How?", metadata={"reference": " "}),
    ]
    assert checked_truth(plain, "exact") is None
    truth = checked_truth([*plain, Prompt(prompt_id="q4", text="6 x 7?", metadata=REFERENCES["q4"])], "exact")
    assert truth is not None and truth(PREFERENCES[4]) is Winner.A and truth(PREFERENCES[0]) is None


def test_the_report_gives_both_checked_accuracies(tmp_path: Path) -> None:
    summaries = [summarise("kin", 4, PREFERENCES, None, reference_truth(REFERENCES, "exact"))]
    paths = write_report(summaries, tmp_path, None, {"prompts": 4})
    md = paths["report_md"].read_text()
    assert "| checked accuracy (n) | zebra checked accuracy (n) |" in md
    assert md.count("| 66.7% (3) | 66.7% (3) |") == 1 and "**checked accuracy**" in md
    policy = json.loads(paths["report_json"].read_text())["policies"][0]
    assert policy["checked_pairs"] == 4 and policy["checked_accuracy_n"] == 3
