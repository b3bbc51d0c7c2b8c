"""The rating stage's state machine, without Kafka: complete by accounting, backstop by the
clock, pair late answers, recognise replays, forget after retention, rebuild after recovery."""

from __future__ import annotations

from typing import Any

from karma.agents.gathering import Gathered, Gatherer
from karma.agents.kinship import KinRule, load_profiles
from karma.agents.pairing import make_pairs
from karma.agents.rating_state import Answer, AnswerKey, PromptEntry, PromptText
from karma.schemas.models import KinPair, Response
from tests import records

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
PROFILES = load_profiles()
BACKSTOP_MS, RETENTION_MS = 300_000.0, 3_600_000.0


def pair_all(gathered: Gathered) -> list[KinPair]:
    """The `all` policy: every pair, so what a late answer adds is easy to predict."""
    return make_pairs(gathered, PROFILES, KinRule(-1.0, 1.0), "all")


def gatherer(pool: list[str] = POOL, retention_max: int = 1000, **stores: Any) -> Gatherer:
    return Gatherer(
        pool,
        stores.get("meta", {}),
        stores.get("answers", {}),
        pair_all,
        backstop_ms=BACKSTOP_MS,
        retention_ms=RETENTION_MS,
        retention_max=retention_max,
    )


def answer(model: str, prompt_id: str = "p-1", error: str | None = None) -> Response:
    return records.response(
        prompt_id,
        model,
        text="" if error else f"answer of {model} with a few words",
        error=error,
        prompt_text="Why is the sky blue?",
        num_tokens=0 if error else 7,
    )


def feed(g: Gatherer, models: list[str], now: float = 0.0, prompt_id: str = "p-1") -> list[KinPair]:
    pairs = []
    for model in models:
        outcome = g.on_response(answer(model, prompt_id), partition=0, now_ms=now)
        assert not outcome.letters
        pairs += outcome.pairs
    g.flush()
    return pairs


def test_a_prompt_completes_when_every_model_answered_not_by_the_clock() -> None:
    g = gatherer(["a-model", "b-model", "c-model"])
    assert feed(g, ["a-model", "b-model"]) == []  # still waiting for c-model
    assert g.open_prompts == 1
    pairs = feed(g, ["c-model"], now=5.0)
    assert len(pairs) == 3 and g.open_prompts == 0  # `all` over three answers


def test_a_failure_record_accounts_for_its_model() -> None:
    g = gatherer(["a-model", "b-model", "c-model"])
    feed(g, ["a-model", "b-model"])
    outcome = g.on_response(answer("c-model", error="HTTP 500 (4 attempt(s))"), 0, 1.0)
    assert len(outcome.pairs) == 1 and not outcome.letters  # a/b paired at once, no clock involved
    entry = g.entry("p-1")
    assert entry is not None and entry.statuses["c-model"] == "HTTP 500 (4 attempt(s))"


def test_fewer_than_two_answers_is_an_unpaired_letter_naming_the_prompt_and_the_failures() -> None:
    g = gatherer(["a-model", "b-model"])
    g.on_response(answer("a-model"), 0, 0.0)
    outcome = g.on_response(answer("b-model", error="timed out"), 0, 1.0)
    [letter] = outcome.letters
    assert (letter.prompt_id, letter.partition, letter.error_type) == ("p-1", 0, "unpaired")
    assert "answered: a-model" in letter.reason and "b-model (timed out)" in letter.reason
    assert letter.models == ("b-model",)  # the models without an answer, for readers of the field


def test_the_backstop_pairs_what_came_and_names_the_silent_models() -> None:
    g = gatherer(["a-model", "b-model", "c-model"])
    feed(g, ["a-model", "b-model"], now=1000.0)
    assert g.on_tick(0, now_ms=1000.0 + BACKSTOP_MS - 1).pairs == []  # not yet
    outcome = g.on_tick(0, now_ms=1000.0 + BACKSTOP_MS)
    assert len(outcome.pairs) == 1
    [letter] = outcome.letters
    assert letter.error_type == "incomplete" and "no word from c-model within 300 s" in letter.reason
    assert letter.models == ("c-model",)  # the silent ones only: what `karma audit` reads
    assert g.open_prompts == 0


def test_a_late_answer_is_paired_never_dropped() -> None:
    g = gatherer(["a-model", "b-model", "c-model"])
    first = feed(g, ["a-model", "b-model"])
    first += g.on_tick(0, now_ms=BACKSTOP_MS).pairs
    outcome = g.on_response(answer("c-model"), 0, BACKSTOP_MS + 60_000)
    assert outcome.late and not outcome.letters
    assert len(outcome.pairs) == 2  # c with a and with b; a/b was emitted already
    emitted = {p.pair_id for p in first + outcome.pairs}
    assert len(emitted) == 3


def test_replays_are_recognised_before_and_after_completion() -> None:
    g = gatherer(["a-model", "b-model"])
    feed(g, ["a-model"])
    assert g.on_response(answer("a-model"), 0, 1.0).duplicate
    feed(g, ["b-model"])
    replay = g.on_response(answer("b-model"), 0, 2.0)
    assert replay.duplicate and replay.pairs == []


def test_state_survives_in_the_stores_and_queues_are_rebuilt_after_recovery() -> None:
    meta: dict[str, PromptEntry] = {}
    answers: dict[AnswerKey, Answer | PromptText] = {}
    before = gatherer(["a-model", "b-model", "c-model"], meta=meta, answers=answers)
    feed(before, ["a-model", "b-model"], now=0.0)
    feed(before, ["a-model", "b-model", "c-model"], now=10.0, prompt_id="p-2")
    # A new worker takes over the partition: its queues come from the recovered table.
    after = gatherer(["a-model", "b-model", "c-model"], meta=meta, answers=answers)
    after.rebuild(meta.items())
    assert after.open_prompts == 1
    assert after.on_response(answer("b-model", "p-2"), 0, 20.0).duplicate  # p-2 was done
    outcome = after.on_tick(0, now_ms=BACKSTOP_MS)
    assert [letter.prompt_id for letter in outcome.letters] == ["p-1"]


def test_unflushed_changes_can_be_discarded_for_a_retry() -> None:
    meta: dict[str, PromptEntry] = {}
    g = gatherer(["a-model", "b-model"], meta=meta)
    g.on_response(answer("a-model"), 0, 0.0)
    g.discard()  # the batch failed: its meta changes are not kept
    assert meta == {} and not g.on_response(answer("a-model"), 0, 1.0).duplicate


def test_finished_prompts_are_forgotten_after_retention_or_beyond_the_count() -> None:
    meta: dict[str, PromptEntry] = {}
    answers: dict[AnswerKey, Answer | PromptText] = {}
    g = gatherer(["a-model", "b-model"], retention_max=2, meta=meta, answers=answers)
    for i in range(3):
        feed(g, ["a-model", "b-model"], now=float(i), prompt_id=f"p-{i}")
    g.on_tick(0, now_ms=10.0)  # three done, two may stay: the oldest goes
    assert sorted(meta) == ["p-1", "p-2"]
    assert not any(key.prompt_id == "p-0" for key in answers)
    g.on_tick(0, now_ms=2.0 + RETENTION_MS)
    assert meta == {} and answers == {}


class CountingDict(dict[Any, Any]):
    """A store that records its writes, as a changelog would."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[Any] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


def test_state_written_per_response_is_proportional_to_that_response() -> None:
    meta, answers = CountingDict(), CountingDict()
    g = gatherer(["a-model", "b-model", "c-model"], meta=meta, answers=answers)
    # Accounted for within one batch: one small meta write, no answer text stored at all.
    feed(g, ["a-model", "b-model", "c-model"])
    assert meta.writes == ["p-1"] and answers.writes == []
    assert "answer of" not in repr(meta["p-1"])
    # Spread over batches: each answer is stored once, while the prompt is still open.
    feed(g, ["a-model"], prompt_id="p-2")
    feed(g, ["b-model"], prompt_id="p-2")
    assert answers.writes == [AnswerKey("p-2"), AnswerKey("p-2", "a-model"), AnswerKey("p-2", "b-model")]
    assert meta.writes == ["p-1", "p-2", "p-2"]


def test_the_kin_policy_pairs_a_late_model_with_its_kin() -> None:
    """A late model gets the kin pairs it would have had on time (wizardlm-13b is the default
    pool's middle kin: llama-2-13b-chat/wizardlm-13b and wizardlm-13b/vicuna-33b)."""
    rule = KinRule(0.95, 0.15)

    def kin_gatherer() -> Gatherer:
        return Gatherer(
            POOL,
            {},
            {},
            lambda gathered: make_pairs(gathered, PROFILES, rule),
            backstop_ms=BACKSTOP_MS,
            retention_ms=RETENTION_MS,
            retention_max=10,
        )

    on_time = {p.pair_id for p in feed(kin_gatherer(), POOL)}
    assert len(on_time) == 2
    late = kin_gatherer()
    pairs = feed(late, [m for m in POOL if m != "wizardlm-13b"])
    pairs += late.on_tick(0, now_ms=BACKSTOP_MS).pairs
    pairs += late.on_response(answer("wizardlm-13b"), 0, BACKSTOP_MS + 1).pairs
    assert on_time <= {p.pair_id for p in pairs}


def test_a_rebuild_in_the_middle_of_a_batch_keeps_its_unflushed_changes() -> None:
    """Recovery may complete while a batch awaits a send: its changes must still be flushed."""
    meta: dict[str, PromptEntry] = {}
    g = gatherer(["a-model", "b-model", "c-model"], meta=meta)
    g.on_response(answer("a-model"), 0, 0.0)
    g.rebuild(meta.items())  # the table does not have p-1 yet
    assert g.open_prompts == 1
    g.on_response(answer("b-model"), 0, 1.0)
    g.flush()
    assert meta["p-1"].statuses == {"a-model": "ok", "b-model": "ok"}
    assert g.on_tick(0, now_ms=BACKSTOP_MS).letters  # and its backstop still comes
