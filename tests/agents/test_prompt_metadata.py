"""A prompt's metadata reaches the judge: generation copies it into every response (and its
failure records), the rating stage keeps it with the prompt's text in its state (an entry written
before the field loads as {}), every pair carries it, and each judge request gets it. Its bytes are
counted with the prompt's text where record sizes are checked."""

from __future__ import annotations

import asyncio
import json

from karma.agents.backends import BackendError, Generation
from karma.agents.gathering import Gatherer
from karma.agents.generation import publish_answer
from karma.agents.judging import requests_for
from karma.agents.rating import RatingStage, Tables
from karma.agents.rating_state import AnswerKey, PromptText, answers_kept, decode_answer, encode_answer
from karma.schemas.models import Prompt, Response
from karma.streams.codecs import decode, encode
from karma.streams.sizes import Limit, RecordLimits, TextBudget, prompt_cost, text_cost
from tests import records
from tests.agents.test_gathering import BACKSTOP_MS, RETENTION_MS, pair_all
from tests.agents.test_generation import BUDGET, Generator, RecordingOutbox
from tests.agents.test_rating import Hopping, Rig, answer, answered, stored

METADATA = {"reference": "42", "scorer": "numeric", "skill": "arithmetic"}
PROMPT = Prompt(prompt_id="p-m", text="What is 6 x 7?", source="test", metadata=METADATA)


def _published(result: Generation | BackendError, budget: TextBudget = BUDGET) -> list[Response]:
    outbox = RecordingOutbox()
    asyncio.run(publish_answer(outbox, "event", PROMPT, Generator(), result, budget))  # type: ignore[arg-type]
    return [decode(value, Response) for short, _, value, _ in outbox.published if short == "responses"]


def test_generation_copies_the_prompts_metadata_into_answers_and_failure_records() -> None:
    [answer] = _published(Generation("42", 1, 1.0, simulated=True))
    assert answer.prompt_metadata == METADATA and not answer.failed
    [failure] = _published(BackendError("server kept failing"))
    assert failure.prompt_metadata == METADATA and failure.failed


def _gatherer(answers: dict) -> Gatherer:  # type: ignore[type-arg]
    return Gatherer(
        ["m1", "m2"],
        {},
        answers,
        pair_all,
        backstop_ms=BACKSTOP_MS,
        retention_ms=RETENTION_MS,
        retention_max=10,
    )


def _response(model: str, metadata: dict[str, str] | None = METADATA) -> Response:
    return records.response("p-m", model, prompt_text=PROMPT.text, prompt_metadata=metadata)


def test_the_rating_state_keeps_it_with_the_prompt_text_and_every_pair_carries_it() -> None:
    store: dict = {}  # type: ignore[type-arg]  # what the faust table holds: the encoding
    g = _gatherer(answers_kept(store))
    assert g.on_response(_response("m1"), 0, 0.0).pairs == []
    g.flush()  # the prompt is open: its text and metadata are written to the state
    assert store["p-m|"] == {"text": PROMPT.text, "meta": METADATA}
    [pair] = g.on_response(_response("m2"), 0, 1.0).pairs
    assert pair.prompt_metadata == METADATA and pair.prompt_text == PROMPT.text
    first, second = requests_for(pair)
    assert dict(first.metadata) == dict(second.metadata) == METADATA
    assert first.prompt_id == second.prompt_id == "p-m"


def test_a_late_answer_is_paired_with_the_metadata_kept_in_the_state() -> None:
    store: dict = {}  # type: ignore[type-arg]
    g = _gatherer(answers_kept(store))
    g.on_response(_response("m1"), 0, 0.0)
    g.flush()
    # A new gatherer over the same tables (a restarted worker): only the state has the metadata.
    restarted = _gatherer(answers_kept(store))
    restarted.meta = g.meta
    [pair] = restarted.on_response(_response("m2", metadata={}), 0, 1.0).pairs
    assert pair.prompt_metadata == METADATA


def test_prompt_text_encoding_without_metadata_is_unchanged_and_old_entries_load() -> None:
    key = AnswerKey("p-m")
    assert encode_answer(PromptText("Why?")) == {"text": "Why?"}  # the bytes written before the field
    assert decode_answer(key, {"text": "Why?"}) == PromptText("Why?", {})
    assert decode_answer(key, encode_answer(PromptText("Why?", METADATA))) == PromptText("Why?", METADATA)


def test_a_prompt_without_metadata_gives_pairs_with_none() -> None:
    g = _gatherer({})
    g.on_response(_response("m1", metadata=None), 0, 0.0)
    [pair] = g.on_response(_response("m2", metadata=None), 0, 0.0).pairs
    assert pair.prompt_metadata == {}


def test_its_bytes_are_counted_with_the_prompt_text() -> None:
    assert prompt_cost(PROMPT.text) == text_cost(PROMPT.text)
    assert prompt_cost(PROMPT.text, METADATA) == text_cost(PROMPT.text) + len(json.dumps(METADATA))
    budget = TextBudget("karma.pairs", Limit(4096 + 2_000, "test"), 100)
    assert budget.room(PROMPT.text, METADATA) < budget.room(PROMPT.text)
    # A reference large enough leaves no room for the answers: the prompt is too large to travel.
    heavy = {"reference": "x" * 2_000}
    assert budget.prompt_too_large(PROMPT.text) is None
    reason = budget.prompt_too_large(PROMPT.text, heavy)
    assert reason is not None and "its metadata included" in reason
    # ... and an answer that fits beside the bare prompt may not fit beside its metadata.
    answer = "y" * (budget.room(PROMPT.text) - 2)
    assert budget.answer_too_large(PROMPT.text, answer) is None
    assert budget.answer_too_large(PROMPT.text, answer, {"reference": "z" * 100}) is not None


def test_the_rating_state_counts_the_metadata_with_the_prompt_text() -> None:
    """A prompt whose text fits the changelog that keeps it but whose metadata does not is too
    large to keep: the answer is dead-lettered naming its model, as for a long prompt text."""
    rig = Rig()
    first, second, *_ = rig.settings.model_names
    rig.tables = Tables(rig.tables.prompts, rig.tables.answers, Hopping(), answers_changelog="changelog")
    rig.rating = RatingStage(rig.stage, rig.tables, clock=rig.clock)
    rig.stage.delivery.limits = RecordLimits({}, Limit(8_000, "test"))  # the changelog's too
    heavy = answer(first).model_copy(update={"prompt_metadata": {"reference": "x" * 5_000}})
    assert rig.rating.too_large_to_keep(answer(first)) is None  # the text alone fits
    rig.rate(rig.event("responses", encode(heavy)), answered(rig, second))
    [letter] = rig.outbox.letters
    assert letter["error_type"] == "too_large" and letter["models"] == [first]
    assert "its prompt" in letter["reason"]
    assert stored(rig).statuses[first] != "ok"
