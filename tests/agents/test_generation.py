"""Generation's answers and failures without Kafka: `publish_answer` with an outbox that records.
Every letter about a model's answer names that model in `models`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from karma.agents.backends import BackendError, Generation
from karma.agents.generation import publish_answer
from karma.schemas.models import Prompt, Response
from karma.streams.codecs import decode
from karma.streams.delivery import Refusal
from karma.streams.sizes import Limit, TextBudget

PROMPT = Prompt(prompt_id="p-1", text="Why is the sky blue?", source="test")
BUDGET = TextBudget("karma.pairs", Limit(1_000_000, "test"), 16_384)


@dataclass(frozen=True)
class Generator:
    model: str = "m-1"
    backend: str = "simulated"
    version: int = 1


class RecordingOutbox:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.letters: list[dict[str, Any]] = []

    async def publish(self, short: str, key: str, value: bytes, **kwargs: Any) -> None:
        self.published.append((short, key, value, kwargs))

    async def dead_letter(self, event: Any, **kwargs: Any) -> None:
        self.letters.append({"event": event, **kwargs})


def published(result: Generation | BackendError, budget: TextBudget = BUDGET) -> RecordingOutbox:
    outbox = RecordingOutbox()
    asyncio.run(publish_answer(outbox, "event", PROMPT, Generator(), result, budget))  # type: ignore[arg-type]
    return outbox


def test_an_answer_names_its_model_for_the_letter_that_would_replace_it() -> None:
    outbox = published(Generation("Rayleigh scattering.", 3, 1.0, simulated=True))
    [(short, key, value, kwargs)] = outbox.published
    assert (short, key, decode(value, Response).text) == ("responses", "p-1", "Rayleigh scattering.")
    assert kwargs["models"] == ["m-1"] and kwargs["cause"] == "event" and not outbox.letters


def test_a_failed_model_gets_a_letter_naming_it_and_a_failure_record() -> None:
    outbox = published(BackendError("server kept failing", kind="backend"))
    [letter] = outbox.letters
    assert letter["models"] == ["m-1"] and letter["error_type"] == "backend" and letter["prompt_id"] == "p-1"
    [(_, _, value, _)] = outbox.published
    assert decode(value, Response).error == "server kept failing"


def test_an_answer_too_long_to_travel_is_a_failure_of_its_model() -> None:
    small = TextBudget("karma.pairs", Limit(4096 + 2_000, "test"), 100)
    outbox = published(Generation("word " * 1_000, 1_000, 1.0, simulated=True), small)
    [letter] = outbox.letters
    assert letter["error_type"] == "too_large" and letter["models"] == ["m-1"]


def test_the_failure_record_that_replaces_a_refused_answer_names_its_model_too() -> None:
    outbox = published(Generation("Rayleigh scattering.", 3, 1.0, simulated=True))
    on_refused = outbox.published[0][3]["on_refused"]
    asyncio.run(on_refused(Refusal("InvalidTimestampError", "InvalidTimestampError: bad", too_large=False)))
    _, _, value, kwargs = outbox.published[1]
    assert decode(value, Response).error is not None and kwargs["models"] == ["m-1"]


def test_a_prompt_too_long_for_the_models_context_is_a_letter_and_a_failure_record() -> None:
    why = "/ckpt: prompt p-1 is 900 tokens, over the 480 the model takes (context 512 less max_tokens 32)"
    outbox = published(BackendError(why, kind="too_long"))
    [letter] = outbox.letters
    assert letter["error_type"] == "too_long" and letter["models"] == ["m-1"] and letter["prompt_id"] == "p-1"
    assert letter["reason"] == f"prompt p-1, model m-1: {why}"
    [(_, _, value, _)] = outbox.published  # the rating stage knows the model is accounted for
    assert decode(value, Response).error == why
