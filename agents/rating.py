"""Competency-rating stage: gathers each prompt's answers and picks kin pairs.

The decisions are made by `agents/gathering.py` (a pure state machine: complete by
accounting, backstop, late answers, retention); `RatingStage` is its faust adapter: it feeds
the machine the events of its topics in batches, keeps its state in changelogged tables (so a
restarted worker carries on where it stopped), and publishes the pairs and letters it decides.
It has one method per input (`on_response`, `on_preference`, `on_tick`, dispatched by
`rate_batch`) and runs without Kafka in the tests (plain mappings for tables, a recording
Stage); `register` declares it on a worker's app: the tables, the agent, the recovery hook and
the tick timer.

Tables, co-partitioned with karma.responses:
- `rating-prompts`: one small entry per prompt (models accounted, pairs emitted, verdicts
  counted), written at most once per batch;
- `rating-answers`: one entry per answer (and one per prompt text), written once;
- `rating-competency`: hopping-windowed verdict tallies per model pair (online competency).
The code reads and writes typed records; the tables hold their encoding (agents/rating_state.py
documents it and its versions), through its `Encoded` views: entries written before the records
existed are encoding version 1, so a worker restored from an older changelog reads them.

Timeouts need a clock inside the stream: faust only lets a table change while an event of
its partition is being processed. A timer therefore sends one tick per partition to the
internal `rating.ticks` topic, and the tick expires what is due on that partition.

Online competency (`competency.online`, on by default): the stage also reads the judge's
verdicts from karma.preferences (keyed by prompt, so co-partitioned with the responses) and
tallies them per model pair in the hopping `rating-competency` table (changelogged, so a
restarted worker recovers its evidence). A verdict is counted once: its id is remembered in
the prompt's entry. Once per tick interval the tallies of the current window, summed over the
partitions this worker holds, go through `agents.competency.assess`, and the blended
superiority is what pairing uses from then on. With several rating workers each one learns
from the verdicts of its own partitions: the same estimate on a share of the evidence.

Outputs before the state that records them: a batch's pairs and letters are sent and confirmed
by the broker first (`Outbox.confirm`), and only then is the state written that records them
as emitted, with the batch's verdict evidence (streams/delivery.py confirms those changelog
writes before the batch is acked). A worker that dies in between has written no state for
them, so the redelivered batch decides and sends the same pairs again (same ids; consumers
de-duplicate); a batch that fails and is handled again counts each verdict once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from karma.agents.competency import Tally, assess, is_evidence, pair_key, player_of, score_of_first
from karma.agents.gathering import Gathered, Gatherer, Outcome
from karma.agents.kinship import load_profiles
from karma.agents.pairing import LiveCompetency, make_pairs
from karma.agents.rating_state import (
    CompetencyKey,
    StateDecodeError,
    answers_kept,
    decode_competency_key,
    encode_competency_key,
    prompt_entries,
)
from karma.schemas.models import KinPair, Preference, Response
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.delivery import ConfirmedTable, Outbox
from karma.streams.metrics import (
    COMPARISONS,
    DUPLICATES,
    KIN_GAP,
    LATE_ANSWERS,
    MESSAGES_IN,
    PAIRS,
    PENDING_PROMPTS,
    SUPERIORITY,
)
from karma.streams.sizes import RECORD_OVERHEAD_BYTES, prompt_cost, text_cost
from karma.streams.stage import Stage, raw_topic

STAGE = "rating"


def _now_ms() -> float:
    return time.time() * 1000


def _no_writes() -> list[Awaitable[Any]]:
    return []


@dataclass(frozen=True)
class Tables:
    """The stage's state (see the module docstring): faust tables in a worker, plain mappings
    and a stand-in for the hopping table in the tests. Both hold what the tables store: the
    records' encoding (agents/rating_state.py)."""

    prompts: MutableMapping[str, Any]
    answers: MutableMapping[str, Any]
    # Hopping: `competency[key]` is faust's WindowSet (`+=` adds in the current event's
    # windows), `competency[key][window]` the value in one window.
    competency: Any
    # The changelog writes the tables made since last asked, to be confirmed with the outputs
    # (streams/delivery.py ConfirmedTable); plain mappings make none.
    written: Callable[[], list[Awaitable[Any]]] = _no_writes
    # The changelog topic that keeps the answers (None: no changelog), whose record limit bounds
    # what one answer may take in the state.
    answers_changelog: str | None = None


def declare_tables(stage: Stage) -> Tables:
    """The stage's changelogged tables on the worker's app."""
    settings, app = stage.settings, stage.app
    prompts = app.Table("rating-prompts", default=None, partitions=settings.partitions)
    answers = app.Table("rating-answers", default=None, partitions=settings.partitions)
    competency = app.Table("rating-competency", default=float, partitions=settings.partitions)
    changelogged = [table for table in (prompts, answers, competency) if isinstance(table, ConfirmedTable)]
    return Tables(
        prompts=prompts,
        answers=answers,
        competency=competency.hopping(
            settings.window_size_s, settings.window_step_s, expires=settings.window_size_s * 2
        ),
        written=lambda: [write for table in changelogged for write in table.take_writes()],
        answers_changelog=answers.changelog_topic.get_topic_name(),
    )


def tally_keys(model_a: str, model_b: str, partition: int) -> tuple[CompetencyKey, CompetencyKey]:
    """The competency table's keys of a model pair (a < b) on one partition: how often the two
    met, and a's score. Per partition, so each count is written where its verdicts are."""
    return (
        CompetencyKey(model_a, model_b, partition, "n"),
        CompetencyKey(model_a, model_b, partition, "score"),
    )


class RatingStage:
    """One worker's rating stage: the gathering machine over its tables, the superiority
    pairing uses now, and a method per input. `clock` (ms) is the wall clock; tests move it."""

    def __init__(self, stage: Stage, tables: Tables, clock: Callable[[], float] = _now_ms) -> None:
        settings = stage.settings
        self.stage = stage
        self.settings = settings
        self.tables = tables
        self.clock = clock
        self.profiles = load_profiles(settings.kin.profiles)
        self.rule = settings.kin.rule()
        self.pool = settings.model_names
        self.online = settings.competency.online
        # Who online competency assesses: the pool's models and every version of them seen in a
        # response or verdict (agents/competency.py player_of), so a new checkpoint is a player.
        self.players: set[str] = set(self.pool)
        # Verdict evidence of the batch being handled: (event, competency key, amount), written
        # with the rest of the state, after the batch's outputs are confirmed.
        self._evidence: list[tuple[Any, CompetencyKey, float]] = []
        # What pairing uses; refreshed from the competency table once per tick interval.
        self.current = LiveCompetency(superiority={m: self.profiles.superiority(m) for m in self.pool})
        self.gatherer = Gatherer(
            self.pool,
            prompt_entries(tables.prompts),
            answers_kept(tables.answers),
            self.pair,
            backstop_ms=settings.gather_timeout_s * 1000,
            retention_ms=settings.done_retention_s * 1000,
            retention_max=settings.done_retention_max,
        )

    @property
    def inputs(self) -> list[str]:
        """The topics the stage reads; the verdicts only when it learns competency online."""
        names = self.stage.names
        return [names.responses, names.ticks] + ([names.preferences] if self.online else [])

    def pair(self, gathered: Gathered) -> list[KinPair]:
        """The pairing policy over one prompt's answers, with the superiority known now."""
        settings = self.settings
        return make_pairs(
            gathered,
            self.profiles,
            self.rule,
            settings.policy,
            settings.kin.hybrid_weight,
            self.current.superiority,
        )

    # -- inputs -------------------------------------------------------------------------------

    async def rate_batch(self, stream: Any, events: list[Any], outbox: Outbox) -> None:
        """Handles one batch of the stage's topics, then writes the state it changed.

        The pairs and letters go out first and are confirmed (`outbox.confirm`) before the state
        that records them as emitted is written: a worker that dies in between has written no
        state for them, so the redelivered batch decides and sends them again (same ids)."""
        now = self.clock()
        by_partition = {}
        names = self.stage.names
        for event in events:
            # faust writes a table change to the changelog partition of the current event.
            stream._set_current_event(event)
            by_partition[event.message.partition] = event
            topic = event.message.topic
            if topic == names.ticks:
                await self.on_tick(event, now, outbox)
            elif topic == names.preferences:
                await self.on_preference(event, outbox)
            else:
                await self.on_response(event, now, outbox)
        await outbox.confirm()
        self.gatherer.flush(lambda partition: stream._set_current_event(by_partition[partition]))
        competency = self.tables.competency
        for event, key, amount in self._evidence:
            stream._set_current_event(event)  # the verdict's partition and time window
            competency[encode_competency_key(key)] += amount
        self._evidence.clear()
        outbox.track(self.tables.written())  # confirmed before the batch is acked
        PENDING_PROMPTS.set(self.gatherer.open_prompts)

    def discard(self) -> None:
        """Forgets what a failed attempt decided and did not write (it is handled again)."""
        self.gatherer.discard()
        self._evidence.clear()

    async def on_response(self, event: Any, now_ms: float, outbox: Outbox) -> None:
        MESSAGES_IN.labels(STAGE).inc()
        try:
            response = decode(event.value, Response)
        except DecodeError as exc:
            await outbox.dead_letter(event, reason=exc.reason, error_type=exc.kind)
            return
        too_large = self.too_large_to_keep(response)
        if too_large is not None:
            # Its answer cannot be kept in the state: dead-lettered, and its model accounted for.
            await outbox.dead_letter(
                event,
                reason=too_large,
                error_type="too_large",
                record_id=response.response_id,
                models=[response.model],
            )
            response = response.model_copy(update={"text": "", "error": too_large})
        self.players.add(player_of(response.model, response.model_version))
        outcome = self.gatherer.on_response(response, event.message.partition, now_ms)
        if outcome.duplicate:
            DUPLICATES.labels(STAGE).inc()  # a replay after a restart: already counted
        if outcome.late:
            LATE_ANSWERS.inc()
        await self.publish(outcome, event.message.partition, outbox)

    def too_large_to_keep(self, response: Response) -> str | None:
        """Why a response's answer (or its prompt) would not fit a record of the changelog that
        keeps them, or None. Generation bounds both below the karma topics' limit; this holds
        them to the changelog's, should that be lower."""
        if response.failed or self.tables.answers_changelog is None:
            return None
        topic = self.tables.answers_changelog
        limit = self.stage.delivery.limits.of(topic)
        costs = (
            ("answer", text_cost(response.text)),
            # The prompt's text is kept with its metadata (agents/rating_state.py PromptText).
            ("prompt", prompt_cost(response.prompt_text, response.prompt_metadata)),
        )
        for what, cost in costs:
            if cost + RECORD_OVERHEAD_BYTES > limit.max_bytes:
                return (
                    f"response {response.response_id} of prompt {response.prompt_id}: its {what} "
                    f"({cost:,} bytes as JSON) cannot be kept in the rating state: "
                    f"{limit.describe(topic)}"
                )
        return None

    async def on_preference(self, event: Any, outbox: Outbox) -> None:
        try:
            preference = decode(event.value, Preference)
        except DecodeError as exc:
            await outbox.dead_letter(event, reason=exc.reason, error_type=exc.kind)
            return
        if not self.gatherer.counted_verdict(preference.prompt_id, preference.preference_id):
            DUPLICATES.labels(STAGE).inc()  # a replayed verdict: its evidence is already in
            return
        if not is_evidence(preference):
            return
        sides = (preference.response_a, preference.response_b)
        a, b = (player_of(side.model, side.model_version) for side in sides)
        self.players.update((a, b))
        key = pair_key(a, b)
        n_key, score_key = tally_keys(*key, event.message.partition)
        # Written with the verdict's id in its prompt's entry (rate_batch), never before: a retried
        # batch counts it once.
        self._evidence.append((event, n_key, 1.0))
        self._evidence.append((event, score_key, score_of_first(key, a, preference.winner)))

    async def on_tick(self, event: Any, now_ms: float, outbox: Outbox) -> None:
        """Refreshes the superiority when due, and expires what is due on the tick's partition."""
        if self.online and now_ms - self.current.refreshed_at >= self.settings.tick_interval_s * 1000:
            self.current.refreshed_at = now_ms
            self.refresh_competency()
        partition = event.message.partition
        await self.publish(self.gatherer.on_tick(partition, now_ms), partition, outbox)

    def rebuild(self) -> None:
        """After every rebalance's recovery: the time queues of the partitions held now, and the
        players whose tallies the recovered competency table holds."""
        self.gatherer.rebuild(self.gatherer.meta.items())
        self.players.update(self.tallied_players())
        PENDING_PROMPTS.set(self.gatherer.open_prompts)

    # -- outputs ------------------------------------------------------------------------------

    async def publish(self, outcome: Outcome, partition: int, outbox: Outbox) -> None:
        """The pairs and letters of one input; a pair refused by its topic is replaced by a
        letter that names it (`record_id`) and its two models on the prompt's partition."""
        for pair in outcome.pairs:
            PAIRS.labels(pair.policy).inc()
            KIN_GAP.observe(pair.gap)
            await outbox.publish(
                "pairs",
                pair.prompt_id,
                encode(pair),
                record_id=pair.pair_id,
                models=(pair.response_a.model, pair.response_b.model),
                partition=partition,
            )
        for letter in outcome.letters:
            await outbox.dead_letter_prompt(
                letter.prompt_id,
                letter.partition,
                reason=letter.reason,
                error_type=letter.error_type,
                models=letter.models,
            )

    async def send_ticks(self) -> None:
        """One tick per partition, so each partition's expiries run inside its own stream."""
        for partition in range(self.settings.partitions):
            await self.stage.topics["ticks"].send(value=b"tick", partition=partition)

    # -- online competency --------------------------------------------------------------------

    def window_tallies(self) -> dict[tuple[str, str], Tally]:
        """The current window's tallies of the known players, summed over every partition this
        worker holds."""
        competency = self.tables.competency
        window = competency.table.window.earliest(self.clock() / 1000)
        tallies = {}
        for a, b in itertools.combinations(sorted(self.players), 2):
            n = score = 0.0
            for partition in range(self.settings.partitions):
                n_key, score_key = tally_keys(a, b, partition)
                n += competency[encode_competency_key(n_key)][window]
                score += competency[encode_competency_key(score_key)][window]
            if n:
                tallies[(a, b)] = Tally(n, score)
        return tallies

    def tallied_players(self) -> set[str]:
        """The players named by the competency table's keys, in any window: after a restart, the
        versions whose evidence the worker must assess again. The table's store is keyed by
        (key, window) (a tuple, or a list as a serialized store decodes it)."""
        players = set()
        for stored in list(self.tables.competency.table.data):
            key = stored[0] if isinstance(stored, tuple | list) else stored
            try:
                decoded = decode_competency_key(key)
            except StateDecodeError:
                continue  # not a tally key: nothing to assess
            players.update((decoded.model_a, decoded.model_b))
        return players

    def refresh_competency(self) -> None:
        assessed = assess(
            self.players,
            self.profiles,
            self.window_tallies(),
            evidence=self.settings.competency.evidence,
            scale=self.settings.competency.scale,
        )
        self.current.superiority = {m: c.blended for m, c in assessed.items()}
        for m, c in assessed.items():
            SUPERIORITY.labels(m, "prior").set(c.prior)
            SUPERIORITY.labels(m, "blended").set(c.blended)
            SUPERIORITY.labels(m, "online").set(c.online if c.online is not None else float("nan"))
            COMPARISONS.labels(m).set(c.comparisons)


def register(stage: Stage) -> None:
    """Declares the rating stage on a worker's app (streams/worker.py calls it)."""
    settings, app = stage.settings, stage.app
    tables = declare_tables(stage)
    rating = RatingStage(stage, tables)
    source = raw_topic(app, *rating.inputs, partitions=settings.partitions)

    @tables.prompts.on_recover  # type: ignore[attr-defined]  # a faust Table here, not any mapping
    async def rebuild_time_queues() -> None:
        rating.rebuild()

    @app.agent(source, name="rate")
    async def rate(stream: Any) -> None:
        await stage.in_batches(
            stream,
            STAGE,
            lambda events, outbox: rating.rate_batch(stream, events, outbox),
            on_retry=rating.discard,
            batch_size=settings.rating_batch_size,
        )

    @app.timer(interval=settings.tick_interval_s)
    async def send_ticks() -> None:
        await rating.send_ticks()
