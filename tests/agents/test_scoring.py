"""Scorers check an answer against its reference (agents/scoring.py): the built-in ones by name,
a user's own as module:function, and a clear error for anything else."""

from __future__ import annotations

import pytest

from karma.agents.scoring import ScorerError, first_number, score, scorer


@pytest.mark.parametrize(
    ("name", "answer", "reference", "expected"),
    [
        ("exact", "579", "579", 1.0),
        ("exact", "  579\n", "579", 1.0),
        ("exact", "5790", "579", 0.0),
        ("exact", "Olleh", "olleh", 0.0),  # case matters: reversing a word is exact
        ("numeric", "The sum is 1,234.", "1234", 1.0),
        ("numeric", "1234.0", "1234", 1.0),
        ("numeric", "-17", "-17", 1.0),
        ("numeric", "17", "-17", 0.0),
        ("numeric", "no idea", "12", 0.0),
        ("numeric", "12 or 13", "13", 0.0),  # the first number is the answer
        ("contains", "I think it is Paris, France", "paris", 1.0),
        ("contains", "Lyon", "Paris", 0.0),
    ],
)
def test_built_in_scorers(name: str, answer: str, reference: str, expected: float) -> None:
    assert score(name, answer, reference) == expected


def test_first_number_reads_separators_and_signs() -> None:
    assert first_number("x = -3,001.5 then 7") == -3001.5
    assert first_number("none") is None


def test_a_numeric_reference_without_a_number_is_an_error_not_a_wrong_answer() -> None:
    with pytest.raises(ScorerError, match="holds no number"):
        score("numeric", "12", "twelve")


def test_a_users_scorer_by_module_and_function() -> None:
    assert scorer("tests.agents.test_scoring:length_match") is length_match
    assert score("tests.agents.test_scoring:length_match", "abc", "xyz") == 1.0
    assert score("tests.agents.test_scoring:length_match", "ab", "xyz") == 0.0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("regex", "unknown scorer 'regex': one of exact, numeric, contains, or module:function"),
        ("no_such_module_x:f", "cannot import 'no_such_module_x'"),
        ("tests.agents.test_scoring:missing", "has no function 'missing'"),
    ],
)
def test_a_scorer_that_cannot_be_found_says_why(name: str, message: str) -> None:
    with pytest.raises(ScorerError, match=message):
        score(name, "a", "b")


def test_a_users_scorer_must_return_a_number_in_0_1() -> None:
    with pytest.raises(ScorerError, match=r"returned 2\.0, not a number in \[0, 1\]"):
        score("tests.agents.test_scoring:out_of_range", "a", "b")


def length_match(answer: str, reference: str) -> float:
    return float(len(answer) == len(reference))


def out_of_range(answer: str, reference: str) -> float:
    return 2.0
