"""The rating stage without Kafka: `RatingStage` over plain dicts for tables, a stand-in for the
hopping competency table, a Stage that records what it would send, and events shaped like
faust's (`.value` bytes, `.message.topic/.partition/.offset`, `.key`)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from karma.agents.competency import Tally
from karma.agents.gathering import Gathered
from karma.agents.kinship import load_profiles
from karma.agents.pairing import make_pairs
from karma.agents.rating import STAGE, RatingStage, Tables, declare_tables, tally_keys
from karma.agents.rating_state import (
    Answer,
    AnswerKey,
    PromptEntry,
    PromptText,
    decode_answer,
    decode_answer_key,
    decode_competency_key,
    decode_entry,
    encode_answer,
    encode_answer_key,
    encode_competency_key,
    encode_entry,
)
from karma.schemas.models import KinPair, Preference, Response, Winner, response_id_for
from karma.streams.app import new_stage
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.config import KarmaSettings
from karma.streams.sizes import Limit, RecordLimits
from karma.streams.stage import Stage
from karma.streams.topics import TopicNames
from tests import records

PROMPT_TEXT = "Why is the sky blue?"
START_MS = 1_000_000.0
WINDOW = 0  # the stand-in hopping table has one window


# --- fakes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Event:
    value: bytes
    message: Message
    key: bytes | None = None


class Stream:
    """What rate_batch needs of a faust stream: which event is current (table writes go to its
    changelog partition)."""

    def __init__(self) -> None:
        self.current: Event | None = None

    def _set_current_event(self, event: Event) -> None:
        self.current = event


class WrittenUnder(dict[str, Any]):
    """A table that records, per write, the partition of the stream's current event (and, in
    the shared `log`, that a state write happened)."""

    def __init__(self, stream: Stream, log: list[str]) -> None:
        super().__init__()
        self.stream = stream
        self.log = log
        self.writes: list[tuple[str, int]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        assert self.stream.current is not None
        self.writes.append((key, self.stream.current.message.partition))
        self.log.append("write state")
        super().__setitem__(key, value)


class Windowed:
    """One key of the hopping table, like faust's WindowSet: `+=` adds, `[window]` reads."""

    def __init__(self, values: dict[str, float], key: str) -> None:
        self.values, self.key = values, key

    def __iadd__(self, amount: float) -> Windowed:
        self.values[self.key] += amount
        return self

    def __getitem__(self, window: int) -> float:
        assert window == WINDOW
        return self.values[self.key]


class Window:
    def earliest(self, now_s: float) -> int:
        return WINDOW


class _KeyedByWindow:
    """The stand-in's store as faust keys a windowed table's: (key, window)."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def __iter__(self) -> Any:
        return iter([(key, (0.0, 1.0)) for key in self.values])


class Hopping:
    """Stands in for faust's hopping table: `table[key] += x` adds through the WindowSet, and
    the wrapper's `__setitem__` then ignores the WindowSet it is handed back, as faust's does."""

    def __init__(self) -> None:
        self.values: dict[str, float] = defaultdict(float)  # faust's default=float
        # faust's Table under the wrapper: its window, and its store keyed by (key, window).
        self.table = SimpleNamespace(window=Window(), data=_KeyedByWindow(self.values))

    def __getitem__(self, key: str) -> Windowed:
        return Windowed(self.values, key)

    def __setitem__(self, key: str, value: Any) -> None:
        assert isinstance(value, Windowed)


class Topic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


class RecordingOutbox:
    """An Outbox that records what it would send, and (in `log`, shared with the tables) the
    order of sends, confirmations and state writes. `fail_confirm` makes the next confirm raise,
    as a write the broker did not take, or a worker killed before the broker answered."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.published: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.letters: list[dict[str, Any]] = []  # dead_letter: the event and its kwargs
        self.prompt_letters: list[dict[str, Any]] = []
        self.fail_confirm = False

    async def publish(self, short: str, key: str, value: bytes, **kwargs: Any) -> None:
        self.log.append(f"send {short}")
        self.published.append((short, key, value, kwargs))

    async def dead_letter(self, event: Any, **kwargs: Any) -> None:
        self.log.append("send dlq")
        self.letters.append({"event": event, **kwargs})

    async def dead_letter_prompt(self, prompt_id: str, partition: int, **kwargs: Any) -> None:
        self.log.append("send dlq")
        self.prompt_letters.append({"prompt_id": prompt_id, "partition": partition, **kwargs})

    def track(self, writes: Any) -> None:
        self.log.append("track state writes")

    async def confirm(self) -> None:
        if self.fail_confirm:
            self.fail_confirm = False
            raise ConnectionError("the broker did not confirm")
        self.log.append("confirm")

    def pairs(self) -> list[KinPair]:
        return [decode(value, KinPair) for topic, _, value, _ in self.published if topic == "pairs"]


@dataclass
class Clock:
    now_ms: float = START_MS

    def __call__(self) -> float:
        return self.now_ms


@dataclass
class Rig:
    """A RatingStage with everything it touches in reach; `outbox` records what the last batch
    sent, `log` the order of sends, confirmations and state writes."""

    settings: KarmaSettings = field(default_factory=KarmaSettings)
    clock: Clock = field(default_factory=Clock)
    stream: Stream = field(default_factory=Stream)

    def __post_init__(self) -> None:
        self.stage = Stage(
            settings=self.settings,
            app=None,  # type: ignore[arg-type]
            names=TopicNames.from_settings(self.settings),
            topics={"ticks": Topic()},  # type: ignore[dict-item]
        )
        self.log: list[str] = []
        self.outbox = RecordingOutbox(self.log)
        self.tables = Tables(
            WrittenUnder(self.stream, self.log), WrittenUnder(self.stream, self.log), Hopping()
        )
        self.rating = RatingStage(self.stage, self.tables, clock=self.clock)
        self.offset = 0

    def event(self, topic: str, value: bytes, partition: int = 0, key: bytes | None = None) -> Event:
        self.offset += 1
        return Event(value, Message(getattr(self.stage.names, topic), partition, self.offset), key)

    def rate(self, *events: Event) -> None:
        asyncio.run(self.rating.rate_batch(self.stream, list(events), self.outbox))


def answer(model: str, prompt_id: str = "p-1") -> Response:
    text = f"answer of {model} with a few words"
    return records.response(prompt_id, model, text=text, prompt_text=PROMPT_TEXT, num_tokens=7)


def answered(rig: Rig, model: str, prompt_id: str = "p-1", partition: int = 0) -> Event:
    return rig.event("responses", encode(answer(model, prompt_id)), partition, prompt_id.encode())


def stored(rig: Rig, prompt_id: str = "p-1") -> PromptEntry:
    """A prompt's entry as the table holds it, decoded."""
    return decode_entry(rig.tables.prompts[prompt_id])


def duplicates() -> float:
    return REGISTRY.get_sample_value("karma_duplicates_dropped_total", {"stage": STAGE}) or 0.0


def without_time(pair: KinPair) -> dict[str, Any]:
    return pair.model_dump(exclude={"created_at_ms"})


# --- responses ------------------------------------------------------------------------------


def test_five_answers_of_the_default_pool_are_paired_as_make_pairs_picks() -> None:
    rig = Rig()
    pool = rig.settings.model_names
    assert len(pool) == 5
    rig.rate(*(answered(rig, model) for model in pool))

    gathered = Gathered(
        "p-1",
        PROMPT_TEXT,
        {
            m: {"response_id": response_id_for("p-1", m), "text": answer(m).text, "simulated": True}
            for m in pool
        },
    )
    settings = rig.settings
    expected = make_pairs(
        gathered, load_profiles(), settings.kin.rule(), settings.policy, settings.kin.hybrid_weight
    )
    assert expected  # else this test would prove nothing
    assert [p[:2] for p in rig.outbox.published] == [("pairs", "p-1")] * len(expected)
    assert [p[3]["record_id"] for p in rig.outbox.published] == [p.pair_id for p in expected]
    # A pair refused by its topic is replaced by a letter naming both its models.
    assert [p[3]["models"] for p in rig.outbox.published] == [
        (p.response_a.model, p.response_b.model) for p in expected
    ]
    assert [without_time(p) for p in rig.outbox.pairs()] == [without_time(p) for p in expected]
    assert not rig.outbox.prompt_letters and rig.rating.gatherer.open_prompts == 0


def test_a_replayed_answer_is_counted_once() -> None:
    rig = Rig()
    first, *others = rig.settings.model_names
    before = duplicates()
    rig.rate(answered(rig, first), answered(rig, first))  # a replay within a batch
    assert stored(rig).statuses == {first: "ok"}
    rig.rate(*(answered(rig, m) for m in others))
    pairs = rig.outbox.pairs()
    rig.rate(answered(rig, others[-1]))  # a replay after the prompt was paired
    assert duplicates() == before + 2
    assert rig.outbox.pairs() == pairs and pairs  # nothing paired twice
    assert not rig.outbox.letters and not rig.outbox.prompt_letters


def test_table_writes_go_to_the_partition_of_their_prompt() -> None:
    rig = Rig()
    first, second, *_ = rig.settings.model_names
    # One batch, two prompts on two partitions, both still open: both are written.
    rig.rate(answered(rig, first, "p-1", partition=0), answered(rig, second, "p-2", partition=1))
    written = dict(rig.tables.prompts.writes)
    assert written == {"p-1": 0, "p-2": 1}
    # The keys as the table stores them (agents/rating_state.py: "<prompt_id>|<model>").
    assert {key: p for key, p in rig.tables.answers.writes} == {
        "p-1|": 0,
        f"p-1|{first}": 0,
        "p-2|": 1,
        f"p-2|{second}": 1,
    }


# --- dead letters ---------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["responses", "preferences"])
def test_undecodable_bytes_are_dead_lettered_with_the_decode_error(topic: str) -> None:
    rig = Rig()
    bad = rig.event(topic, b"\x00\x00\x00\x00", partition=2, key=b"p-9")
    with pytest.raises(DecodeError) as raised:
        decode(bad.value, Response)
    rig.rate(bad)
    assert rig.outbox.letters == [
        {"event": bad, "reason": raised.value.reason, "error_type": raised.value.kind}
    ]
    assert raised.value.kind == "decode" and not rig.outbox.published


def test_a_record_that_does_not_validate_is_dead_lettered_as_validation() -> None:
    rig = Rig()
    # Avro-valid bytes of a Response the model rejects: a negative token count.
    record = answer(rig.settings.model_names[0]).model_dump(mode="python") | {"num_tokens": -1}
    bad = rig.event("responses", encode(Response.model_construct(**record)))
    rig.rate(bad)
    [letter] = rig.outbox.letters
    assert letter["error_type"] == "validation" and "num_tokens" in letter["reason"]


def test_an_answer_too_large_for_the_rating_state_is_dead_lettered_naming_its_model() -> None:
    rig = Rig()
    first, second, *_ = rig.settings.model_names
    rig.tables = Tables(rig.tables.prompts, rig.tables.answers, Hopping(), answers_changelog="changelog")
    rig.rating = RatingStage(rig.stage, rig.tables, clock=rig.clock)
    rig.stage.delivery.limits = RecordLimits({}, Limit(8_000, "test"))  # the changelog's too
    big = answer(first).model_copy(update={"text": "word " * 2_000})
    rig.rate(rig.event("responses", encode(big)), answered(rig, second))
    [letter] = rig.outbox.letters
    assert letter["error_type"] == "too_large" and letter["models"] == [first]
    assert letter["record_id"] == big.response_id
    assert stored(rig).statuses[first] != "ok"  # accounted for as failed


def test_a_tick_after_the_backstop_dead_letters_the_incomplete_prompt() -> None:
    rig = Rig()
    pool = rig.settings.model_names
    rig.rate(*(answered(rig, m, partition=3) for m in pool[:3]))
    backstop_ms = rig.settings.gather_timeout_s * 1000

    rig.clock.now_ms = START_MS + backstop_ms - 1
    rig.rate(rig.event("ticks", b"tick", partition=3))
    assert not rig.outbox.prompt_letters and not rig.outbox.published  # not yet
    rig.clock.now_ms = START_MS + backstop_ms
    rig.rate(rig.event("ticks", b"tick", partition=0))
    assert not rig.outbox.prompt_letters  # another partition's tick expires only its own

    rig.rate(rig.event("ticks", b"tick", partition=3))
    [letter] = rig.outbox.prompt_letters
    assert letter["prompt_id"] == "p-1" and letter["partition"] == 3
    assert letter["error_type"] == "incomplete"
    assert all(m in letter["reason"] for m in pool[3:])  # names the silent models
    assert letter["models"] == tuple(pool[3:])  # and says so in the field the audit reads
    assert rig.outbox.pairs()  # what came is paired
    assert rig.rating.gatherer.open_prompts == 0


def test_a_restarted_stage_carries_on_from_its_tables() -> None:
    rig = Rig()
    pool = rig.settings.model_names
    rig.rate(*(answered(rig, m) for m in pool[:4]))
    # A new worker over the same (recovered) tables: the recovery hook rebuilds its queues.
    restarted = RatingStage(rig.stage, rig.tables, clock=rig.clock)
    restarted.rebuild()
    assert restarted.gatherer.open_prompts == 1
    asyncio.run(restarted.rate_batch(rig.stream, [answered(rig, pool[4])], rig.outbox))
    assert len(rig.outbox.pairs()) > 0 and restarted.gatherer.open_prompts == 0


def test_ticks_go_to_every_partition() -> None:
    rig = Rig()
    asyncio.run(rig.rating.send_ticks())
    sent = rig.stage.topics["ticks"].sent  # type: ignore[attr-defined]
    assert sent == [{"value": b"tick", "partition": p} for p in range(rig.settings.partitions)]


# --- online competency ----------------------------------------------------------------------


def verdict(pair: KinPair, winner: Winner, judge: str = "simulated") -> Preference:
    """A verdict on `pair`; its id names the judge, so two judges' verdicts are two verdicts."""
    preference = records.preference_on(pair, winner, consistent=True, judge=judge)
    return preference.model_copy(update={"preference_id": f"{pair.pair_id}-{judge}"})


def test_verdicts_are_tallied_once_and_move_the_superiority_pairing_uses() -> None:
    rig = Rig()
    assert rig.settings.competency.online
    # Verdicts are keyed by prompt, so they come on the partition of the prompt's answers.
    rig.rate(*(answered(rig, m, partition=1) for m in rig.settings.model_names))
    pair = rig.outbox.pairs()[0]
    a, b = pair.response_a.model, pair.response_b.model
    key = tuple(sorted((a, b)))
    won = verdict(pair, Winner.A)
    before = duplicates()

    rig.rate(rig.event("preferences", encode(won), partition=1))
    rig.rate(rig.event("preferences", encode(won), partition=1))  # replayed: counted once
    rig.rate(rig.event("preferences", encode(verdict(pair, Winner.A, judge="zebra")), partition=1))
    assert duplicates() == before + 1
    n_key, score_key = tally_keys(*key, 1)
    assert rig.tables.competency.values[encode_competency_key(n_key)] == 1.0
    assert rig.rating.window_tallies() == {key: Tally(1.0, 1.0 if key[0] == a else 0.0)}

    prior = dict(rig.rating.current.superiority)
    rig.rate(rig.event("ticks", b"tick", partition=1))  # the first tick refreshes
    learned = rig.rating.current.superiority
    assert learned[a] > prior[a] and learned[b] < prior[b]
    assert rig.rating.current.refreshed_at == rig.clock.now_ms


def test_a_checkpoints_verdicts_are_its_own_and_its_answers_are_paired_at_its_superiority() -> None:
    """Version 2 of a model (a `karma train` checkpoint) is a player of its own: its verdicts
    move its superiority, not version 1's, and pairing scores its answers by it."""
    rig = Rig()
    pool = rig.settings.model_names
    student = min(pool, key=load_profiles().superiority)
    v2 = f"{student}@v2"

    def answers(prompt_id: str) -> list[Event]:
        return [
            rig.event(
                "responses",
                encode(
                    records.response(
                        prompt_id, m, prompt_text=PROMPT_TEXT, model_version=2 if m == student else 1
                    )
                ),
                partition=1,
                key=prompt_id.encode(),
            )
            for m in pool
        ]

    for number in range(6):
        rig.rate(*answers(f"p-{number}"))
    mine = [p for p in rig.outbox.pairs() if student in (p.response_a.model, p.response_b.model)]
    assert mine and all(
        (p.response_a if p.response_a.model == student else p.response_b).model_version == 2 for p in mine
    )
    won = [verdict(p, Winner.A if p.response_a.model == student else Winner.B) for p in mine]
    rig.rate(*(rig.event("preferences", encode(v), partition=1) for v in won))
    opponents = {(p.response_b if p.response_a.model == student else p.response_a).model for p in mine}
    assert set(rig.rating.window_tallies()) == {tuple(sorted((v2, other))) for other in opponents}
    prior = rig.rating.current.superiority[student]
    rig.rate(rig.event("ticks", b"tick", partition=1))
    learned = rig.rating.current.superiority
    assert learned[v2] > prior == learned[student]  # version 1 has no verdicts: it keeps its prior

    before = len(rig.outbox.pairs())
    rig.rate(*answers("p-next"))
    scored = {
        side.model: side.superiority
        for p in rig.outbox.pairs()[before:]
        for side in (p.response_a, p.response_b)
    }
    assert scored[student] == learned[v2]

    # A worker restarted over the same (recovered) tables finds the version in the tallies' keys.
    restarted = RatingStage(rig.stage, rig.tables, clock=rig.clock)
    assert v2 not in restarted.players
    restarted.rebuild()
    assert v2 in restarted.players and restarted.window_tallies() == rig.rating.window_tallies()


def test_an_answer_of_a_trained_version_kept_between_batches_is_paired_as_that_version() -> None:
    """A prompt still open at the end of a batch keeps its answers in the state; a version-2
    answer read back from it is still version 2 (its id and its side of the pair say so)."""
    rig = Rig()
    first, *others = rig.settings.model_names
    answer_v2 = records.response("p-1", first, prompt_text=PROMPT_TEXT, model_version=2)
    rig.rate(rig.event("responses", encode(answer_v2), key=b"p-1"))
    assert rig.rating.gatherer.open_prompts == 1 and not rig.outbox.pairs()
    rig.rate(*(answered(rig, m) for m in others))
    sides = [side for p in rig.outbox.pairs() for side in (p.response_a, p.response_b) if side.model == first]
    assert sides and {(s.model_version, s.response_id) for s in sides} == {(2, answer_v2.response_id)}
    assert not rig.outbox.letters and not rig.outbox.prompt_letters


def test_offline_the_stage_reads_no_verdicts_and_keeps_the_prior() -> None:
    rig = Rig(settings=KarmaSettings(competency={"online": False}))
    names = rig.stage.names
    assert rig.rating.inputs == [names.responses, names.ticks]
    prior = dict(rig.rating.current.superiority)
    rig.rate(rig.event("ticks", b"tick"))
    assert rig.rating.current.superiority == prior and rig.rating.current.refreshed_at == 0.0


# --- outputs before the state that records them -----------------------------------------------


def test_pairs_are_confirmed_before_the_state_that_records_them_is_written() -> None:
    rig = Rig()
    rig.rate(*(answered(rig, m) for m in rig.settings.model_names))
    assert rig.outbox.pairs()
    confirmed = rig.log.index("confirm")
    assert set(rig.log[:confirmed]) == {"send pairs"}  # every pair sent, nothing written yet
    assert "write state" in rig.log[confirmed:] and rig.log[-1] == "track state writes"
    assert stored(rig).pairs == [p.pair_id for p in rig.outbox.pairs()]


def test_a_batch_whose_pairs_were_not_confirmed_writes_no_state_and_sends_them_again() -> None:
    """A worker killed (or a write refused) between sending the pairs and writing the state: the
    redelivered batch finds no state claiming the pairs, so it decides and sends them again."""
    rig = Rig()
    batch = [answered(rig, m) for m in rig.settings.model_names]
    rig.outbox.fail_confirm = True
    with pytest.raises(ConnectionError):
        rig.rate(*batch)
    first = [p.pair_id for p in rig.outbox.pairs()]
    assert first and "write state" not in rig.log and not rig.tables.prompts and not rig.tables.answers
    rig.rating.discard()  # what Stage.handle_safely does before it tries the batch again

    rig.rate(*batch)
    assert [p.pair_id for p in rig.outbox.pairs()] == first * 2  # the same pairs, sent again
    assert stored(rig).pairs == first


def test_a_retried_batch_counts_each_verdict_once() -> None:
    rig = Rig()
    rig.rate(*(answered(rig, m, partition=1) for m in rig.settings.model_names))
    pair = rig.outbox.pairs()[0]
    key = tuple(sorted((pair.response_a.model, pair.response_b.model)))
    verdicts = [rig.event("preferences", encode(verdict(pair, Winner.A)), partition=1)]

    rig.outbox.fail_confirm = True  # the batch fails after the verdict was handled...
    with pytest.raises(ConnectionError):
        rig.rate(*verdicts)
    rig.rating.discard()
    rig.rate(*verdicts)  # ...and is handled again
    assert rig.rating.window_tallies() == {key: Tally(1.0, 1.0 if key[0] == pair.response_a.model else 0.0)}


# --- state written before the typed records: real changelog bytes -------------------------------

# Changelog records of the three tables as the code before agents/rating_state.py wrote them, in
# a real run (tests/agents/data/: the file's note and the script that made it).
OLD_STATE = Path(__file__).parent / "data" / "old_rating_changelogs.json"


@dataclass
class Restored:
    """The tables as a worker restores them from a changelog: what each key holds, and the
    partition of the record that last wrote it."""

    values: dict[Any, Any]
    partitions: dict[Any, int]


def restore_old_changelogs() -> tuple[KarmaSettings, dict[str, Restored], Any]:
    """Each record deserialized by its table's own changelog serializers and applied by faust's
    own changelog path (`apply_changelog_batch`), in the order the changelog holds them; with
    the hopping table's window (faust's)."""
    fixture = json.loads(OLD_STATE.read_text())
    settings = KarmaSettings(pool=[{"name": name} for name in fixture["pool"]], policy="all", metrics_port=0)
    stage = new_stage(settings, roles=["rate"])
    tables = declare_tables(stage)
    restored = {}
    for name, table in [
        ("rating-prompts", tables.prompts),
        ("rating-answers", tables.answers),
        ("rating-competency", tables.competency.table),
    ]:
        topic, serializers = table.changelog_topic, stage.app.serializers  # type: ignore[attr-defined]
        events, partitions = [], {}
        for record in fixture["changelogs"][name]:
            raw_key, raw_value = (
                None if b is None else base64.b64decode(b) for b in (record["key"], record["value"])
            )
            key = serializers.loads_key(topic.key_type, raw_key, serializer=topic.key_serializer)
            value = serializers.loads_value(topic.value_type, raw_value, serializer=topic.value_serializer)
            events.append(
                SimpleNamespace(
                    key=key,
                    value=value,
                    message=SimpleNamespace(partition=record["partition"], value=raw_value),
                )
            )
            partitions[table._to_key(key)] = record["partition"]  # type: ignore[attr-defined]
        table.apply_changelog_batch(events)  # type: ignore[attr-defined]
        restored[name] = Restored(dict(table.data), partitions)  # type: ignore[attr-defined]
    return settings, restored, tables.competency.table.window  # type: ignore[attr-defined]


def test_changelogs_written_before_the_records_load_into_them() -> None:
    _, restored, _ = restore_old_changelogs()
    prompts = restored["rating-prompts"]
    entries = {prompt_id: decode_entry(stored) for prompt_id, stored in prompts.values.items()}
    assert sorted(entries) == ["old-0", "old-1", "old-2", "old-backstopped", "old-open"]
    for prompt_id, entry in entries.items():
        assert entry.partition == prompts.partitions[prompt_id]  # written where it says it lives
        # Written back, an entry is what the old code wrote: older workers read it as before.
        assert encode_entry(entry) == prompts.values[prompt_id]
    failed = "gpt-3.5-turbo"  # its server was a closed port: a failure record, every time
    for prompt_id in ("old-0", "old-1", "old-2"):
        entry = entries[prompt_id]
        assert entry.finished and entry.answered == ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"]
        assert "cannot reach" in entry.statuses[failed] and not entry.silent
        assert len(entry.pairs) == 3 and sorted(entry.judged) == sorted(entry.pairs)
    backstopped = entries["old-backstopped"]
    assert backstopped.finished and backstopped.silent == ["vicuna-33b"] and len(backstopped.judged) == 1
    assert not entries["old-open"].finished and entries["old-open"].answered == [
        "llama-2-13b-chat",
        "wizardlm-13b",
    ]

    answers = restored["rating-answers"]
    kept = {decode_answer_key(key): key for key in answers.values}
    assert set(kept) == set(
        AnswerKey(prompt_id, model)
        for prompt_id in ("old-backstopped", "old-open")
        for model in (None, "llama-2-13b-chat", "wizardlm-13b")
    )
    for key, stored_key in kept.items():
        value = decode_answer(key, answers.values[stored_key])
        assert answers.partitions[stored_key] == entries[key.prompt_id].partition
        assert encode_answer_key(key) == stored_key and encode_answer(value) == answers.values[stored_key]
        if key.model is None:
            assert value == PromptText(
                {"old-open": "Why is water wet?", "old-backstopped": "Why do cats purr?"}[key.prompt_id]
            )
        else:
            assert (
                isinstance(value, Answer)
                and value.simulated
                and value.text.startswith(f"[simulated {key.model}]")
            )

    competency = restored["rating-competency"]
    assert competency.values  # (key, window) -> value, the windows faust's own
    for (stored_key, _window), value in competency.values.items():
        key = decode_competency_key(stored_key)
        assert encode_competency_key(key) == stored_key  # new evidence adds to the same keys
        assert key.partition == competency.partitions[(stored_key, _window)] and key.model_a < key.model_b
        assert value > 0 if key.measure == "n" else value >= 0


def test_a_stage_restored_from_changelogs_written_before_the_records_carries_on() -> None:
    settings, restored, hopping = restore_old_changelogs()
    rig = Rig(settings=settings)
    # dict.update: restored, not written by this stage (no write is logged).
    dict.update(rig.tables.prompts, restored["rating-prompts"].values)
    dict.update(rig.tables.answers, restored["rating-answers"].values)
    # The stand-in hopping table holds one window: the current one when the last verdict came.
    windows = restored["rating-competency"].values
    now = hopping.earliest(max(start for _, (start, _) in windows))
    for (key, window), value in windows.items():
        if window == now:
            rig.tables.competency.values[key] = value
    open_entry = decode_entry(rig.tables.prompts["old-open"])
    rig.clock.now_ms = open_entry.first_seen_ms + 1_000  # within its backstop
    rig.rating.rebuild()
    assert rig.rating.gatherer.open_prompts == 1  # old-open

    # Verdicts counted by the old code are evidence now: one per pair of each judged prompt.
    llama, wizard, vicuna = "llama-2-13b-chat", "wizardlm-13b", "vicuna-33b"
    tallies = rig.rating.window_tallies()
    assert {pair: t.n for pair, t in tallies.items()} == {
        (llama, vicuna): 3.0,
        (llama, wizard): 4.0,
        (vicuna, wizard): 3.0,
    }

    # The open prompt completes with its last answer, paired with the answers the old code kept.
    rig.rate(answered(rig, vicuna, "old-open", partition=3))
    pairs = rig.outbox.pairs()
    assert len(pairs) == 3 and {p.prompt_text for p in pairs} == {"Why is water wet?"}
    kept = {p.response_a.response_id for p in pairs} | {p.response_b.response_id for p in pairs}
    assert {"r-83779b97fea5ae1c9f10c0ba", "r-40827aef4f23ece3a18641f5"} <= kept  # ids from the old bytes
    assert rig.rating.gatherer.open_prompts == 0 and stored(rig, "old-open").finished

    # The backstopped prompt pairs its late answer with the kept ones, not the pair it emitted.
    before = decode_entry(restored["rating-prompts"].values["old-backstopped"])
    rig.rate(answered(rig, vicuna, "old-backstopped", partition=1))
    late = rig.outbox.pairs()[3:]
    assert len(late) == 2 and not {p.pair_id for p in late} & set(before.pairs)
    assert all(vicuna in (p.response_a.model, p.response_b.model) for p in late)

    # Replays of what the old code counted are recognised.
    replays = duplicates()
    rig.rate(answered(rig, llama, "old-0", partition=1))
    assert duplicates() == replays + 1 and len(rig.outbox.pairs()) == 5
    old_0 = stored(rig, "old-0")
    assert not rig.rating.gatherer.counted_verdict("old-0", old_0.judged[0])

    # After retention every prompt is forgotten, and the keys the old code wrote are deleted.
    rig.clock.now_ms += settings.done_retention_s * 1000 * 2
    rig.rate(*(rig.event("ticks", b"tick", partition=p) for p in (1, 3)))
    assert rig.tables.prompts == {} and rig.tables.answers == {}
