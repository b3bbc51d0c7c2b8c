"""The audit's ledger on hand-made records, without Kafka: one prompt per class, and the ways a
prompt can look settled while it is not (a lost pair, a letter that points elsewhere)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from karma.schemas.models import (
    DeadLetter,
    KinPair,
    Prompt,
    Record,
    Response,
    Winner,
    pair_id_for,
    response_id_for,
)
from karma.streams.client import Received
from karma.streams.config import KarmaSettings
from karma.tools.audit import Ledger, State, build_ledger, expected_pairs_for
from tests import records

POOL = ["m-a", "m-b", "m-c"]
T0 = 1_700_000_000_000
BACKSTOP_MS = 30_000
SOON = T0 + 1_000  # well within the backstop
LATER = T0 + 3_600_000  # long past it


def every_pair(prompt_id: str, _text: str, answers: Mapping[str, Response]) -> dict[str, tuple[str, str]]:
    """An `expected_pairs` whose policy pairs every two answers."""
    return {
        pair_id_for(prompt_id, answers[a].response_id, answers[b].response_id): (a, b)
        for a, b in itertools.combinations(sorted(answers), 2)
    }


@dataclass
class Topics:
    """Hand-made messages of the five topics, one partition each, offsets in order."""

    messages: dict[str, list[Received]] = field(
        default_factory=lambda: {t: [] for t in ("prompts", "responses", "pairs", "preferences", "dlq")}
    )

    def put(
        self, topic: str, record: Record | None, key: str | None, ts: int, error: str | None = None
    ) -> Received:
        msg = Received(
            topic=f"t.{topic}",
            partition=0,
            offset=len(self.messages[topic]),
            key=key.encode() if key else None,
            record=record,
            error=error,
            timestamp_ms=ts,
        )
        self.messages[topic].append(msg)
        return msg

    def prompt(self, prompt_id: str, ts: int = T0) -> Received:
        return self.put("prompts", Prompt(prompt_id=prompt_id, text="Why?", created_at_ms=ts), prompt_id, ts)

    def garbage_prompt(self, key: str | None = None, ts: int = T0) -> Received:
        return self.put("prompts", None, key, ts, error="magic byte is 123, expected 0")

    def answer(self, prompt_id: str, model: str, ts: int = T0, error: str | None = None) -> Received:
        response = records.response(prompt_id, model, error=error, num_tokens=3, created_at_ms=ts)
        return self.put("responses", response, prompt_id, ts)

    def answers(self, prompt_id: str, models: list[str] = POOL, ts: int = T0) -> None:
        for model in models:
            self.answer(prompt_id, model, ts)

    def pair(self, prompt_id: str, a: str, b: str, ts: int = T0) -> Received:
        pair = records.kin_pair(prompt_id, a, b, policy="all", gap=0.01, created_at_ms=ts)
        return self.put("pairs", pair, prompt_id, ts)

    def preference(self, pair_msg: Received, ts: int = T0) -> Received:
        pair = pair_msg.record
        assert isinstance(pair, KinPair)
        preference = records.preference_on(pair, Winner.A, created_at_ms=ts)
        return self.put("preferences", preference, pair.prompt_id, ts)

    def judged_pair(self, prompt_id: str, a: str, b: str, ts: int = T0) -> Received:
        pair = self.pair(prompt_id, a, b, ts)
        self.preference(pair, ts)
        return pair

    def letter(
        self,
        prompt_id: str | None,
        error_type: str,
        reason: str,
        *,
        stage: str = "rating",
        at: Received | None = None,
        record_id: str | None = None,
        models: list[str] | None = None,
        ts: int = T0,
    ) -> Received:
        """A dead letter; `at` is the message it points at (none: the responses topic, offset -1,
        as the rating stage's unpaired and incomplete letters, and its letters for pairs it could
        not write, which name the pair in `record_id`). `models` empty: as written before
        dead-letter schema version 4."""
        letter = DeadLetter(
            reason=reason,
            error_type=error_type,
            stage=stage,
            prompt_id=prompt_id,
            source_topic=at.topic if at else "t.responses",
            source_partition=at.partition if at else 0,
            source_offset=at.offset if at else -1,
            record_id=record_id,
            models=models or [],
            created_at_ms=ts,
        )
        return self.put("dlq", letter, prompt_id, ts)

    def ledger(self, now_ms: int = SOON, expected_pairs=None) -> Ledger:  # type: ignore[no-untyped-def]
        m = self.messages
        return build_ledger(
            m["prompts"],
            m["responses"],
            m["pairs"],
            m["preferences"],
            m["dlq"],
            pool=POOL,
            now_ms=now_ms,
            backstop_ms=BACKSTOP_MS,
            expected_pairs=expected_pairs,
        )


def only(ledger: Ledger, state: State) -> None:
    """Every submitted prompt is in `state`."""
    assert ledger.counts[state] == ledger.submitted
    assert sum(ledger.counts.values()) == ledger.submitted


def fully_judged(topics: Topics, prompt_id: str, ts: int = T0) -> None:
    """Every model answered and every pair of them was judged."""
    topics.prompt(prompt_id, ts)
    topics.answers(prompt_id, ts=ts)
    for a, b in itertools.combinations(POOL, 2):
        topics.judged_pair(prompt_id, a, b, ts)


# --- one prompt per class --------------------------------------------------------------------


def test_every_answer_paired_and_judged_is_complete() -> None:
    topics = Topics()
    fully_judged(topics, "p-1")
    ledger = topics.ledger(expected_pairs=every_pair)
    only(ledger, State.COMPLETE)
    assert ledger.submitted == 1 and ledger.prompts == () and ledger.unaccounted == 0


def test_zero_pairs_with_every_model_answered_is_complete() -> None:
    # The kin policy may find no kin: nothing expected, nothing owed.
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    only(topics.ledger(LATER, expected_pairs=lambda *_: {}), State.COMPLETE)
    only(topics.ledger(LATER), State.COMPLETE)


def test_stragglers_paired_after_the_backstop_are_complete_late() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    reason = "prompt p-1: no word from m-c within 30 s; paired what came (answered: m-a, m-b; silent: m-c)"
    topics.letter("p-1", "incomplete", reason, models=["m-c"], ts=T0 + 30_000)
    topics.answer("p-1", "m-c", ts=T0 + 40_000)
    topics.judged_pair("p-1", "m-a", "m-c", ts=T0 + 40_000)
    topics.judged_pair("p-1", "m-b", "m-c", ts=T0 + 40_000)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.COMPLETE_LATE)
    [account] = ledger.prompts
    assert account.preferences == 3 and account.missing == ()
    assert account.reasons == (f"incomplete (rating): {reason}",)


def test_a_failed_model_with_the_other_pair_judged_is_partial() -> None:
    topics = Topics()
    prompt = topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.answer("p-1", "m-c", error="HTTP 500 (5 attempt(s))")
    topics.letter("p-1", "backend", "prompt p-1, model m-c: HTTP 500", stage="generation", at=prompt)
    topics.judged_pair("p-1", "m-a", "m-b")
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.PARTIAL)
    [account] = ledger.prompts
    assert account.reasons == (
        "m-c failed: HTTP 500 (5 attempt(s))",
        "backend (generation): prompt p-1, model m-c: HTTP 500",
    )
    assert account.missing == ("answer from m-c: failed (HTTP 500 (5 attempt(s)))",)


def test_a_model_named_missing_by_the_backstop_that_never_came_is_partial() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.letter("p-1", "incomplete", "prompt p-1: no word from 1 model", models=["m-c"], ts=T0 + 30_000)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.PARTIAL)
    assert ledger.prompts[0].missing == ("answer from m-c: named missing by the backstop (incomplete)",)


def test_the_models_an_incomplete_letter_names_are_its_field_never_its_reason() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    # Its reason names m-c, its field another model: the field is what counts.
    topics.letter("p-1", "incomplete", "prompt p-1: no word from m-c within 30 s", models=["m-z"])
    only(topics.ledger(LATER), State.UNACCOUNTED)
    assert topics.ledger(LATER).prompts[0].missing == ("answer from m-c: no word yet",)
    topics.letter("p-1", "incomplete", "prompt p-1: no word from the third model", models=["m-c"])
    only(topics.ledger(LATER), State.PARTIAL)


def test_an_incomplete_letter_written_before_the_models_field_is_read_by_its_reason() -> None:
    # Version 3 bytes decode with models empty, which a version-4 incomplete letter never has.
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.letter("p-1", "incomplete", "prompt p-1: no word from m-c within 30 s", ts=T0 + 30_000)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.PARTIAL)
    assert ledger.prompts[0].missing == ("answer from m-c: named missing by the backstop (incomplete)",)


def test_one_answer_and_an_unpaired_letter_is_dead_lettered() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answer("p-1", "m-a")
    topics.answer("p-1", "m-b", error="timed out")
    topics.answer("p-1", "m-c", error="timed out")
    topics.letter("p-1", "unpaired", "prompt p-1: only 1 of 3 models answered; nothing to pair")
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.DEAD_LETTERED)
    [account] = ledger.prompts
    assert account.preferences == 0
    assert "unpaired (rating): prompt p-1: only 1 of 3 models answered; nothing to pair" in account.reasons
    assert "m-b failed: timed out" in account.reasons


def test_every_pair_dead_lettered_by_the_judge_is_dead_lettered() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    for a, b in itertools.combinations(POOL, 2):
        pair = topics.pair("p-1", a, b)
        topics.letter("p-1", "verdict", f"pair of {a}, {b}: no valid verdict", stage="judging", at=pair)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.DEAD_LETTERED)
    assert len(ledger.prompts[0].reasons) == 3


def test_a_silent_model_is_pending_within_the_backstop_and_unaccounted_after() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    pending = topics.ledger(T0 + BACKSTOP_MS - 1)
    only(pending, State.PENDING)
    assert pending.prompts[0].missing == ("answer from m-c: no word yet",)
    assert pending.unaccounted == 0
    late = topics.ledger(T0 + BACKSTOP_MS)
    only(late, State.UNACCOUNTED)
    assert late.unaccounted == 1


# --- what must not pass for settled ----------------------------------------------------------


def test_a_pair_missing_from_the_pairs_topic_is_not_settled() -> None:
    # The bug this audit is for: a prompt's second pair (and so its preference) silently lost.
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.judged_pair("p-1", "m-a", "m-c")
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.UNACCOUNTED)
    [missing] = ledger.prompts[0].missing
    lost = pair_id_for("p-1", response_id_for("p-1", "m-b"), response_id_for("p-1", "m-c"))
    assert missing == f"pair {lost} (m-b vs m-c): expected, not on the pairs topic"
    # With online competency nothing predicts the pairs: only the emitted ones are checked.
    assert topics.ledger(LATER).counts[State.COMPLETE] == 1
    assert topics.ledger(LATER).pairs_checked == "emitted"


def test_a_pair_the_rating_stage_could_not_write_is_short_not_owed() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.judged_pair("p-1", "m-a", "m-c")
    unwritten = pair_id_for("p-1", response_id_for("p-1", "m-b"), response_id_for("p-1", "m-c"))
    other = pair_id_for("p-1", response_id_for("p-1", "m-a"), response_id_for("p-1", "m-z"))
    # A letter naming another pair does not account for this one.
    topics.letter("p-1", "too_large", "pairs record not written", record_id=other)
    only(topics.ledger(LATER, expected_pairs=every_pair), State.UNACCOUNTED)
    topics.letter("p-1", "too_large", "pairs record not written: 1,200 bytes", record_id=unwritten)
    for expected in (every_pair, None):  # predicted pairs, or only the emitted ones
        ledger = topics.ledger(LATER, expected_pairs=expected)
        only(ledger, State.PARTIAL)
        assert any(m.startswith(f"pair {unwritten}: not written") for m in ledger.prompts[0].missing)


def test_a_refused_answer_with_its_failure_record_and_letter_is_partial() -> None:
    topics = Topics()
    prompt = topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.answer("p-1", "m-c", error="the answer's record was not written: MessageSizeTooLargeError")
    topics.letter("p-1", "refused", "responses record not written", stage="generation", at=prompt)
    topics.judged_pair("p-1", "m-a", "m-b")
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.PARTIAL)
    assert "MessageSizeTooLargeError" in ledger.prompts[0].missing[0]


def test_an_emitted_pair_without_preference_or_letter_is_not_settled() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    pair = topics.pair("p-1", "m-a", "m-b")
    topics.answer("p-1", "m-c", error="down")
    only(topics.ledger(LATER), State.UNACCOUNTED)
    assert "no preference and no judging letter" in topics.ledger(LATER).prompts[0].missing[0]
    # A judging letter that points at another message of the pairs topic does not settle it...
    other = topics.pair("p-2", "m-a", "m-b")
    topics.letter("p-1", "backend", "judge down", stage="judging", at=other)
    only(topics.ledger(LATER), State.UNACCOUNTED)
    # ...the one that points at its pair message does, even naming no prompt (a version-1 letter).
    topics.letter(None, "backend", "judge down", stage="judging", at=pair)
    only(topics.ledger(LATER), State.DEAD_LETTERED)


def test_fewer_than_two_answers_without_the_rating_stages_letter_is_not_settled() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answer("p-1", "m-a")
    topics.answer("p-1", "m-b", error="down")
    topics.answer("p-1", "m-c", error="down")
    only(topics.ledger(LATER), State.UNACCOUNTED)
    assert topics.ledger(LATER).prompts[0].missing[0].startswith("the rating stage's letter")


def test_answers_of_two_models_but_no_pair_when_one_was_expected_is_not_settled() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.answer("p-1", "m-c", error="down")
    only(topics.ledger(SOON, expected_pairs=every_pair), State.PENDING)
    only(topics.ledger(LATER, expected_pairs=every_pair), State.UNACCOUNTED)


def test_an_answer_the_rating_stage_dead_lettered_is_accounted_but_not_paired() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    too_large = topics.answer("p-1", "m-c")
    reason = "response of prompt p-1: its answer cannot be kept in the rating state"
    topics.letter("p-1", "too_large", reason, at=too_large, models=["m-c"])
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.PARTIAL)
    assert ledger.prompts[0].missing == ("answer from m-c: its answer was dead-lettered (not paired)",)


def test_an_unpaired_letter_ends_the_prompt_for_a_model_still_silent() -> None:
    # The rating stage gave up on it (before failure records, the timer wrote only this letter).
    topics = Topics()
    topics.prompt("p-1")
    topics.answer("p-1", "m-a")
    topics.letter("p-1", "unpaired", "prompt p-1: only 1 of 3 models answered within 30 s (m-a)")
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.DEAD_LETTERED)
    assert "answer from m-b: the rating stage ended the prompt (unpaired)" in ledger.prompts[0].missing


def test_a_prompt_dead_lettered_by_generation_before_any_answer_is_dead_lettered() -> None:
    topics = Topics()
    prompt = topics.prompt("p-1")
    topics.letter("p-1", "exception", "unexpected RuntimeError: boom", stage="generation", at=prompt)
    only(topics.ledger(LATER), State.DEAD_LETTERED)


def test_a_straggler_after_the_backstop_is_pending_again_until_it_is_paired() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.letter("p-1", "incomplete", "no word from m-c within 30 s", models=["m-c"], ts=T0 + 30_000)
    topics.answer("p-1", "m-c", ts=T0 + 40_000)
    # It reopened the prompt: the rating stage owes its pairs, and has a backstop to send them.
    only(topics.ledger(T0 + 40_000 + BACKSTOP_MS - 1, expected_pairs=every_pair), State.PENDING)
    only(topics.ledger(T0 + 40_000 + BACKSTOP_MS, expected_pairs=every_pair), State.UNACCOUNTED)


def test_only_whole_model_names_in_the_reason_of_an_incomplete_letter_before_version_4_count() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1", ["m-a", "m-b"])
    topics.judged_pair("p-1", "m-a", "m-b")
    topics.letter("p-1", "incomplete", "prompt p-1: no word from m-c2, m-cx.y within 30 s")
    only(topics.ledger(LATER), State.UNACCOUNTED)
    topics.letter("p-1", "incomplete", "prompt p-1: no word from m-c.")
    only(topics.ledger(LATER), State.PARTIAL)


# --- undecodable prompts, replays, orphans ---------------------------------------------------


def test_an_undecodable_prompt_message_needs_its_dead_letter() -> None:
    topics = Topics()
    fully_judged(topics, "p-1")
    lettered = topics.garbage_prompt(key="p-bad")
    topics.garbage_prompt(key=None)
    topics.letter("p-bad", "decode", "magic byte is 123, expected 0", stage="generation", at=lettered)
    ledger = topics.ledger(LATER)
    assert ledger.submitted == 1 and ledger.counts[State.COMPLETE] == 1
    assert [(u.offset, u.prompt_id, u.state) for u in ledger.undecodable] == [
        (1, "p-bad", State.DEAD_LETTERED),
        (2, None, State.UNACCOUNTED),
    ]
    assert ledger.unaccounted == 1
    # Within the backstop the generation stage may not have read it yet.
    assert topics.ledger(SOON).undecodable[1].state is State.PENDING
    assert topics.ledger(SOON).unaccounted == 0


def test_ids_seen_twice_are_counted_per_topic_and_prompts_once() -> None:
    topics = Topics()
    fully_judged(topics, "p-1")
    topics.prompt("p-1", ts=T0 + 5)  # a resubmission and a replay of every stage's first output
    topics.answer("p-1", "m-a")
    pair = topics.pair("p-1", "m-a", "m-b")
    topics.preference(pair)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    assert ledger.submitted == 1 and ledger.counts[State.COMPLETE] == 1
    assert ledger.seen_twice == {"prompts": 1, "responses": 1, "pairs": 1, "preferences": 1}


def test_records_of_a_prompt_never_submitted_are_orphans() -> None:
    topics = Topics()
    fully_judged(topics, "p-1")
    topics.answer("p-ghost", "m-a")
    topics.judged_pair("p-ghost", "m-a", "m-b")
    ledger = topics.ledger(LATER)
    assert ledger.submitted == 1 and ledger.counts[State.COMPLETE] == 1
    assert ledger.orphans == {"responses": 1, "pairs": 1, "preferences": 1}


# --- the ledger as data, and the rating stage's own pairing as the expectation ---------------


def test_the_ledger_as_json_lists_the_worst_first_up_to_show() -> None:
    topics = Topics()
    fully_judged(topics, "p-complete")
    topics.prompt("p-silent")
    topics.answers("p-silent", ["m-a"])
    topics.prompt("p-dead")
    topics.answer("p-dead", "m-a")
    for model in ("m-b", "m-c"):
        topics.answer("p-dead", model, error="down")
    topics.letter("p-dead", "unpaired", "prompt p-dead: only 1 of 3 models answered")
    data = json.loads(topics.ledger(LATER).to_json(show=1))
    assert data["submitted"] == 3 and data["unaccounted_total"] == 1
    assert data["counts"] == {
        "complete": 1,
        "complete-late": 0,
        "partial": 0,
        "dead-lettered": 1,
        "pending": 0,
        "unaccounted": 1,
    }
    assert data["not_complete"] == 2
    assert [p["prompt_id"] for p in data["prompts"]] == ["p-silent"]
    assert data["prompts"][0]["missing"] == ["answer from m-b: no word yet", "answer from m-c: no word yet"]
    assert data["pairs_checked"] == "emitted" and data["backstop_s"] == 30.0


def test_the_expected_pairs_are_the_rating_stages_make_pairs() -> None:
    models = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"]
    settings = KarmaSettings(pool=[{"name": m} for m in models], competency={"online": False})  # type: ignore[list-item,arg-type]
    answers = {m: records.response("p-1", m, text="an answer of five words") for m in models}
    expected = expected_pairs_for(settings)("p-1", "Why?", answers)
    # The default kin rule pairs these two neighbours (see the README, "The kin rule").
    assert sorted(expected.values()) == [("llama-2-13b-chat", "wizardlm-13b"), ("wizardlm-13b", "vicuna-33b")]
    for pair_id, (a, b) in expected.items():
        assert pair_id == pair_id_for("p-1", answers[a].response_id, answers[b].response_id)


# --- against the rating stage's own state machine ----------------------------------------------


def test_what_the_rating_state_machine_emits_is_complete_late_then_partial() -> None:
    """The letters and pairs of agents/gathering.py (its reason formats included) classify as
    the audit means: a silent model's backstop then its late answer is complete-late; a model
    that never comes is partial; one answer, one failure and one silent model is dead-lettered."""
    from karma.agents.gathering import Gatherer
    from karma.agents.kinship import KinRule, load_profiles
    from karma.agents.pairing import make_pairs

    profiles = load_profiles()
    gatherer = Gatherer(
        POOL,
        {},
        {},
        lambda gathered: make_pairs(gathered, profiles, KinRule(-1.0, 1.0), "all"),
        backstop_ms=BACKSTOP_MS,
        retention_ms=3_600_000,
        retention_max=100,
    )
    topics = Topics()

    def respond(prompt_id: str, model: str, now: int, error: str | None = None) -> None:
        msg = topics.answer(prompt_id, model, ts=now, error=error)
        assert isinstance(msg.record, Response)
        publish(gatherer.on_response(msg.record, 0, now), now)

    def publish(outcome, now: int) -> None:  # type: ignore[no-untyped-def]
        for pair in outcome.pairs:
            topics.preference(topics.put("pairs", pair, pair.prompt_id, now), now)
        for letter in outcome.letters:
            topics.letter(letter.prompt_id, letter.error_type, letter.reason, ts=now)

    for prompt_id in ("p-late", "p-never", "p-failed"):
        topics.prompt(prompt_id)
    for model in ("m-a", "m-b"):
        respond("p-late", model, T0)
        respond("p-never", model, T0)
    respond("p-failed", "m-a", T0)
    respond("p-failed", "m-b", T0, error="HTTP 500")
    publish(gatherer.on_tick(0, T0 + BACKSTOP_MS), T0 + BACKSTOP_MS)
    respond("p-late", "m-c", T0 + BACKSTOP_MS + 5_000)

    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    states = {account.prompt_id: account.state for account in ledger.prompts}
    assert states == {
        "p-late": State.COMPLETE_LATE,
        "p-never": State.PARTIAL,
        "p-failed": State.DEAD_LETTERED,
    }
    [failed] = [a for a in ledger.prompts if a.prompt_id == "p-failed"]
    assert "answer from m-c: named missing by the backstop (incomplete)" in failed.missing
    assert ledger.unaccounted == 0


def test_a_verifiers_letter_settles_exactly_its_pair() -> None:
    """The verifier judge's letters (no reference, a scorer that fails) point at their pair's
    message like any judge's: each settles its pair, and only it."""
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    (a, b), (c, d), (e, f) = itertools.combinations(POOL, 2)
    topics.judged_pair("p-1", a, b)
    lettered = topics.pair("p-1", c, d)
    reason = f"pair {lettered.record.pair_id}: prompt p-1 has no reference"  # type: ignore[union-attr]
    topics.letter("p-1", "no_reference", reason, stage="judging", at=lettered, models=[c, d])
    owed = topics.pair("p-1", e, f)  # neither a preference nor a letter
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    assert ledger.unaccounted == 1
    [story] = ledger.prompts
    assert story.state is State.UNACCOUNTED
    lines = {why.split()[3]: why for why in story.missing}  # "preference for pair <id> ..."
    assert lines[owed.record.pair_id].endswith("no preference and no judging letter")  # type: ignore[union-attr]
    assert lines[lettered.record.pair_id].endswith("dead-lettered by the judge")  # type: ignore[union-attr]
    # Its letter for the last pair too (a scorer that raised): nothing is owed any more.
    topics.letter("p-1", "scorer", "prompt p-1: scorer raised", stage="judging", at=owed, models=[e, f])
    settled = topics.ledger(LATER, expected_pairs=every_pair)
    only(settled, State.PARTIAL)
    assert settled.unaccounted == 0


def test_a_prompt_without_a_reference_lettered_on_every_pair_is_dead_lettered() -> None:
    topics = Topics()
    topics.prompt("p-1")
    topics.answers("p-1")
    for a, b in itertools.combinations(POOL, 2):
        pair = topics.pair("p-1", a, b)
        topics.letter("p-1", "no_reference", "prompt p-1 has no reference", stage="judging", at=pair)
    ledger = topics.ledger(LATER, expected_pairs=every_pair)
    only(ledger, State.DEAD_LETTERED)
    assert ledger.unaccounted == 0
    assert all(r.startswith("no_reference (judging)") for r in ledger.prompts[0].reasons)
