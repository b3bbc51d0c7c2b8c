"""The pydantic models mirror the .avsc files and add the checks Avro cannot make."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from karma.schemas.catalogue import SCHEMA_FILES, load_avsc
from karma.schemas.models import (
    RECORD_TYPES,
    Candidate,
    Preference,
    Prompt,
    Winner,
    pair_id_for,
    prompt_id_of_key,
    response_id_for,
)
from tests import records


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_model_fields_match_the_avro_schema(name: str) -> None:
    avsc_fields = [f["name"] for f in load_avsc(name)["fields"]]
    assert list(RECORD_TYPES[name].model_fields) == avsc_fields


def test_candidate_mirrors_the_nested_record() -> None:
    nested = next(f for f in load_avsc("kin_pair")["fields"] if f["name"] == "response_a")["type"]
    assert list(Candidate.model_fields) == [f["name"] for f in nested["fields"]]


def test_winner_symbols_match() -> None:
    winner = next(f for f in load_avsc("preference")["fields"] if f["name"] == "winner")["type"]
    assert winner["symbols"] == [w.value for w in Winner]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_prompt_text_is_invalid(text: str) -> None:
    with pytest.raises(ValidationError, match="text"):
        Prompt(prompt_id="p-1", text=text)


def test_prompt_id_must_be_a_plain_token() -> None:
    with pytest.raises(ValidationError):
        Prompt(prompt_id="has spaces", text="hello")


def test_ids_are_deterministic_and_pair_ids_order_free() -> None:
    assert response_id_for("p-1", "m") == response_id_for("p-1", "m")
    assert response_id_for("p-1", "m") != response_id_for("p-1", "n")
    assert pair_id_for("p-1", "r-a", "r-b") == pair_id_for("p-1", "r-b", "r-a")
    assert pair_id_for("p-1", "r-a", "r-b") != pair_id_for("p-2", "r-a", "r-b")


def test_a_pair_needs_two_distinct_responses() -> None:
    same = records.candidate("a", "r-1", text="t")
    with pytest.raises(ValidationError, match="distinct"):
        records.kin_pair("p-1", same, same, pair_id="pair-1", prompt_text="q", similarity=1.0)


def _preference(winner: Winner) -> Preference:
    return records.preference(
        "p-1",
        records.candidate("a", "r-a", text="t"),
        records.candidate("b", "r-b", text="t"),
        winner,
        pair_id="pair-1",
        prompt_text="q",
        gap=0.1,
    )


def test_chosen_and_rejected_follow_the_winner() -> None:
    pref = _preference(Winner.B)
    assert (pref.chosen.response_id, pref.rejected.response_id) == ("r-b", "r-a")
    assert pref.to_trl() == {
        "prompt": "q",
        "chosen": "t",
        "rejected": "t",
        "preference_id": "pair-1",
        "simulated": True,
    }


def test_a_tie_has_no_trl_row() -> None:
    assert _preference(Winner.TIE).to_trl() is None


def test_a_message_key_names_its_prompt_only_when_it_is_a_valid_id() -> None:
    assert prompt_id_of_key(b"p-0123abc") == "p-0123abc"
    assert prompt_id_of_key(None) is None and prompt_id_of_key(b"") is None
    assert prompt_id_of_key(b"\xff\xfe") is None  # not UTF-8
    assert prompt_id_of_key(b"two words") is None  # not an id
    assert prompt_id_of_key(b"x" * 257) is None  # longer than an id may be
