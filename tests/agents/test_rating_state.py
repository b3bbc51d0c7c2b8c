"""The rating state's records and their encoding (agents/rating_state.py): the stored form is
pinned (it is what older workers wrote and still read), every record survives a round trip
through JSON as faust's codec writes it, and what cannot be read fails loudly. The bytes of a
real changelog written before the records existed: tests/agents/test_rating.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from karma.agents.rating_state import (
    Answer,
    AnswerKey,
    CompetencyKey,
    Encoded,
    PromptEntry,
    PromptText,
    StateDecodeError,
    answers_kept,
    decode_answer,
    decode_answer_key,
    decode_competency_key,
    decode_entry,
    encode_answer,
    encode_answer_key,
    encode_competency_key,
    encode_entry,
    prompt_entries,
)

# What the stage wrote before the records existed (agents/gathering.py at b6e5a0b), verbatim.
OLD_ENTRY = {
    "p": 3,
    "t0": 1_796_362_716_004.0464,
    "m": {"llama-2-13b-chat": "ok", "gpt-3.5-turbo": "HTTP 500 (4 attempt(s))"},
    "done": None,
    "silent": [],
    "pairs": [],
    "judged": [],
}


def through_json(stored: Any) -> Any:
    """What a table holds after a restart: the value written to its changelog, read back."""
    return json.loads(json.dumps(stored))


# -- the stored form ------------------------------------------------------------------------------


def test_an_entry_is_stored_exactly_as_before_the_records() -> None:
    entry = decode_entry(OLD_ENTRY)
    assert entry == PromptEntry(
        partition=3,
        first_seen_ms=1_796_362_716_004.0464,
        statuses={"llama-2-13b-chat": "ok", "gpt-3.5-turbo": "HTTP 500 (4 attempt(s))"},
    )
    assert entry.answered == ["llama-2-13b-chat"] and not entry.finished
    assert encode_entry(entry) == OLD_ENTRY
    assert list(encode_entry(entry)["m"]) == list(OLD_ENTRY["m"])  # the order models were accounted


def test_answer_and_competency_keys_are_stored_as_before() -> None:
    assert encode_answer_key(AnswerKey("p-1", "wizardlm-13b")) == "p-1|wizardlm-13b"
    assert encode_answer_key(AnswerKey("p-1")) == "p-1|"
    assert encode_answer(Answer("r-1", "an answer", True)) == {"id": "r-1", "text": "an answer", "sim": True}
    assert encode_answer(PromptText("Why?")) == {"text": "Why?"}
    key = CompetencyKey("vicuna-33b", "wizardlm-13b", 1, "score")
    assert encode_competency_key(key) == "vicuna-33b|wizardlm-13b@1:score"


# -- round trips ----------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12)
model_names = st.from_regex(r"[\w.:\-/]{1,16}", fullmatch=True)  # streams/config.py ModelSpec.name
ms = st.floats(min_value=0, max_value=4e12, allow_nan=False)


@st.composite
def entries(draw: st.DrawFn) -> PromptEntry:
    return PromptEntry(
        partition=draw(st.integers(0, 1000)),
        first_seen_ms=draw(ms),
        statuses=draw(st.dictionaries(model_names, st.one_of(st.just("ok"), names), max_size=5)),
        done_ms=draw(st.none() | ms),
        silent=draw(st.lists(model_names, max_size=3)),
        pairs=draw(st.lists(names, max_size=4)),
        judged=draw(st.lists(names, max_size=4)),
    )


@given(entries())
def test_an_entry_survives_the_round_trip(entry: PromptEntry) -> None:
    assert decode_entry(through_json(encode_entry(entry))) == entry


@given(st.text(max_size=20), st.none() | model_names)
def test_an_answer_key_survives_the_round_trip_whatever_the_prompt_id(
    prompt_id: str, model: str | None
) -> None:
    """A prompt id may hold a `|` (a model name cannot): the key splits at its last one."""
    key = AnswerKey(prompt_id, model)
    assert decode_answer_key(through_json(encode_answer_key(key))) == key


@given(st.text(max_size=200), st.text(max_size=20), st.booleans(), st.text(max_size=20), st.integers(1, 50))
def test_answers_and_prompt_texts_survive_the_round_trip(
    text: str, response_id: str, simulated: bool, prompt_id: str, model_version: int
) -> None:
    answer = Answer(response_id, text, simulated, model_version)
    assert decode_answer(AnswerKey(prompt_id, "m"), through_json(encode_answer(answer))) == answer
    prompt = PromptText(text)
    assert decode_answer(AnswerKey(prompt_id), through_json(encode_answer(prompt))) == prompt


@given(model_names, model_names, st.integers(0, 10_000), st.sampled_from(["n", "score"]))
def test_a_competency_key_survives_the_round_trip(a: str, b: str, partition: int, measure: str) -> None:
    """Model names may hold `:` and `.` (`org/model:7b`), never `|` or `@`."""
    key = CompetencyKey(a, b, partition, measure)  # type: ignore[arg-type]  # drawn from Measure
    assert decode_competency_key(through_json(encode_competency_key(key))) == key


def test_an_answer_of_a_trained_version_says_so_within_encoding_version_1() -> None:
    """The model version is its own field ("mv"): "v" is the encoding's version, and an answer of
    version 3 stored under it would be refused as a later encoding."""
    assert encode_answer(Answer("r", "t", False)) == {"id": "r", "text": "t", "sim": False}
    stored = encode_answer(Answer("r", "t", False, model_version=3))
    assert stored == {"id": "r", "text": "t", "sim": False, "mv": 3}
    assert decode_answer(AnswerKey("p-1", "m"), through_json(stored)).model_version == 3


def test_a_copy_shares_nothing_with_its_entry() -> None:
    entry = decode_entry(OLD_ENTRY)
    copy = entry.copy()
    copy.statuses["vicuna-33b"] = "ok"
    copy.pairs.append("pair-1")
    copy.judged.append("pref-1")
    copy.silent.append("vicuna-33b")
    assert encode_entry(entry) == OLD_ENTRY


# -- what cannot be read --------------------------------------------------------------------------


def test_an_entry_of_a_later_encoding_version_is_refused_not_misread() -> None:
    with pytest.raises(StateDecodeError, match="encoding version 2"):
        decode_entry({**OLD_ENTRY, "v": 2})
    with pytest.raises(StateDecodeError, match="encoding version 2"):
        decode_answer(AnswerKey("p-1", "m"), {"v": 2, "id": "r", "text": "t", "sim": False})
    assert decode_entry({**OLD_ENTRY, "v": 1}) == decode_entry(OLD_ENTRY)  # "v": 1 is version 1


def test_a_field_added_by_a_newer_worker_within_version_1_is_ignored() -> None:
    assert decode_entry({**OLD_ENTRY, "retries": 2}) == decode_entry(OLD_ENTRY)


@pytest.mark.parametrize(
    "stored",
    [
        None,
        ["p", 3],
        {k: v for k, v in OLD_ENTRY.items() if k != "judged"},
        {**OLD_ENTRY, "p": "3"},
        {**OLD_ENTRY, "p": True},
        {**OLD_ENTRY, "t0": "soon"},
        {**OLD_ENTRY, "m": {"a-model": 1}},
        {**OLD_ENTRY, "pairs": "pair-1"},
    ],
)
def test_what_is_not_an_entry_fails_with_a_decode_error(stored: Any) -> None:
    with pytest.raises(StateDecodeError):
        decode_entry(stored)


@pytest.mark.parametrize(
    "stored", ["a|b@1", "a|b:n", "ab@1:n", "a|b@x:n", "a|b@1:count", "|b@1:n", "a|@1:n", 7]
)
def test_what_is_not_a_competency_key_fails_with_a_decode_error(stored: Any) -> None:
    with pytest.raises(StateDecodeError):
        decode_competency_key(stored)


def test_an_answer_key_needs_its_bar_and_an_answer_its_fields() -> None:
    with pytest.raises(StateDecodeError):
        decode_answer_key("p-1")
    with pytest.raises(StateDecodeError):
        decode_answer(AnswerKey("p-1", "m"), {"id": "r", "text": "t", "sim": "yes"})
    with pytest.raises(StateDecodeError):
        decode_answer(AnswerKey("p-1", "m"), {"text": "t"})


# -- the tables' view ------------------------------------------------------------------------------


def test_the_view_holds_the_encoding_and_hands_out_records() -> None:
    store: dict[str, Any] = {"p-0": dict(OLD_ENTRY)}
    view: Encoded[str, PromptEntry] = prompt_entries(store)
    entry = PromptEntry(1, 5.0, {"a-model": "ok"})
    view["p-1"] = entry
    assert store["p-1"] == encode_entry(entry)
    assert view["p-1"] == entry and view["p-1"] is not view["p-1"]  # decoded afresh each read
    assert view.get("p-9") is None and view.get("p-0") == decode_entry(OLD_ENTRY)
    assert dict(view.items()) == {"p-0": decode_entry(OLD_ENTRY), "p-1": entry}
    assert list(view) == ["p-0", "p-1"] and len(view) == 2
    assert view.pop("p-0") == decode_entry(OLD_ENTRY) and view.pop("p-0", None) is None
    with pytest.raises(KeyError):
        view.pop("p-0")
    del view["p-1"]
    assert store == {}


def test_the_answers_view_keys_answers_and_prompt_texts_apart() -> None:
    store: dict[str, Any] = {}
    view = answers_kept(store)
    view[AnswerKey("a|b")] = PromptText("Why?")
    view[AnswerKey("a|b", "m-1")] = Answer("r-1", "Because.", False)
    assert store == {"a|b|": {"text": "Why?"}, "a|b|m-1": {"id": "r-1", "text": "Because.", "sim": False}}
    assert dict(view.items()) == {
        AnswerKey("a|b"): PromptText("Why?"),
        AnswerKey("a|b", "m-1"): Answer("r-1", "Because.", False),
    }
