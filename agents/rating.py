"""Competency-rating stage: gathers each prompt's answers and picks kin pairs.

The decisions are made by `agents/gathering.py` (a pure state machine: complete by
accounting, backstop, late answers, retention); this module is its faust adapter: it feeds
the machine the events of its topics in batches, keeps its state in changelogged tables (so a
restarted worker carries on where it stopped), and publishes the pairs and letters it decides.

Tables, co-partitioned with karma.responses:
- `rating-prompts`: one small entry per prompt (models accounted, pairs emitted, verdicts
  counted), written at most once per batch;
- `rating-answers`: one entry per answer (and one per prompt text), written once;
- `rating-competency`: hopping-windowed verdict tallies per model pair (online competency).

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
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from karma.agents.competency import Tally, assess, is_evidence, pair_key, score_of_first
from karma.agents.gathering import Gatherer, Outcome
from karma.agents.kinship import load_profiles
from karma.agents.pairing import LiveCompetency, make_pairs
from karma.schemas.models import Preference, Response
from karma.streams.app import Stage, raw_topic
from karma.streams.codecs import DecodeError, decode, encode
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

STAGE = "rating"


def register(stage: Stage) -> None:
    settings = stage.settings
    app = stage.app
    profiles = load_profiles(settings.kin.profiles)
    rule = settings.kin.rule()
    expected = settings.model_names

    prompts = app.Table("rating-prompts", default=None, partitions=settings.partitions)
    answers = app.Table("rating-answers", default=None, partitions=settings.partitions)
    online = settings.competency.online
    competency = app.Table("rating-competency", default=float, partitions=settings.partitions).hopping(
        settings.window_size_s, settings.window_step_s, expires=settings.window_size_s * 2
    )
    # What pairing uses; refreshed from the competency table once per tick interval.
    current = LiveCompetency(superiority={m: profiles.superiority(m) for m in expected})
    gatherer = Gatherer(
        expected,
        prompts,
        answers,
        lambda gathered: make_pairs(
            gathered, profiles, rule, settings.policy, settings.kin.hybrid_weight, current.superiority
        ),
        backstop_ms=settings.gather_timeout_s * 1000,
        retention_ms=settings.done_retention_s * 1000,
        retention_max=settings.done_retention_max,
    )
    inputs = [stage.names.responses, stage.names.ticks] + ([stage.names.preferences] if online else [])
    source = raw_topic(app, *inputs, partitions=settings.partitions)

    @prompts.on_recover
    async def rebuild_time_queues() -> None:
        # After every rebalance's recovery: the queues of the partitions this worker holds now.
        gatherer.rebuild(prompts.items())
        PENDING_PROMPTS.set(gatherer.open_prompts)

    async def publish(outcome: Outcome) -> None:
        for pair in outcome.pairs:
            PAIRS.labels(pair.policy).inc()
            KIN_GAP.observe(pair.gap)
            await stage.publish(STAGE, "pairs", pair.prompt_id, encode(pair))
        for letter in outcome.letters:
            await stage.dead_letter_prompt(
                letter.prompt_id,
                letter.partition,
                stage=STAGE,
                reason=letter.reason,
                error_type=letter.error_type,
            )

    def window_tallies() -> dict[tuple[str, str], Tally]:
        """The current window's tallies, summed over every partition this worker holds."""
        window = competency.table.window.earliest(time.time())
        tallies = {}
        for a, b in itertools.combinations(sorted(expected), 2):
            n = score = 0.0
            for partition in range(settings.partitions):
                n += competency[f"{a}|{b}@{partition}:n"][window]
                score += competency[f"{a}|{b}@{partition}:score"][window]
            if n:
                tallies[(a, b)] = Tally(n, score)
        return tallies

    def refresh_competency() -> None:
        assessed = assess(
            expected,
            profiles,
            window_tallies(),
            evidence=settings.competency.evidence,
            scale=settings.competency.scale,
        )
        current.superiority = {m: c.blended for m, c in assessed.items()}
        for m, c in assessed.items():
            SUPERIORITY.labels(m, "prior").set(c.prior)
            SUPERIORITY.labels(m, "blended").set(c.blended)
            SUPERIORITY.labels(m, "online").set(c.online if c.online is not None else float("nan"))
            COMPARISONS.labels(m).set(c.comparisons)

    async def on_preference(event: Any) -> None:
        try:
            preference = decode(event.value, Preference)
        except DecodeError as exc:
            await stage.dead_letter(event, stage=STAGE, reason=exc.reason, error_type=exc.kind)
            return
        if not gatherer.counted_verdict(preference.prompt_id, preference.preference_id):
            DUPLICATES.labels(STAGE).inc()  # a replayed verdict: its evidence is already in
            return
        if not is_evidence(preference):
            return
        a, b = preference.response_a.model, preference.response_b.model
        key = pair_key(a, b)
        stem = f"{key[0]}|{key[1]}@{event.message.partition}"
        competency[f"{stem}:n"] += 1.0
        competency[f"{stem}:score"] += score_of_first(key, a, preference.winner)

    async def on_response(event: Any, now_ms: float) -> None:
        MESSAGES_IN.labels(STAGE).inc()
        try:
            response = decode(event.value, Response)
        except DecodeError as exc:
            await stage.dead_letter(event, stage=STAGE, reason=exc.reason, error_type=exc.kind)
            return
        outcome = gatherer.on_response(response, event.message.partition, now_ms)
        if outcome.duplicate:
            DUPLICATES.labels(STAGE).inc()  # a replay after a restart: already counted
        if outcome.late:
            LATE_ANSWERS.inc()
        await publish(outcome)

    async def rate_batch(stream: Any, events: list[Any]) -> None:
        now = _now_ms()
        by_partition = {}
        for event in events:
            # faust writes a table change to the changelog partition of the current event.
            stream._set_current_event(event)
            by_partition[event.message.partition] = event
            topic = event.message.topic
            if topic == stage.names.ticks:
                if online and now - current.refreshed_at >= settings.tick_interval_s * 1000:
                    current.refreshed_at = now
                    refresh_competency()
                await publish(gatherer.on_tick(event.message.partition, now))
            elif topic == stage.names.preferences:
                await on_preference(event)
            else:
                await on_response(event, now)
        gatherer.flush(lambda partition: stream._set_current_event(by_partition[partition]))
        PENDING_PROMPTS.set(gatherer.open_prompts)

    @app.agent(source, name="rate")
    async def rate(stream):  # type: ignore[no-untyped-def]
        await stage.in_batches(
            stream,
            STAGE,
            lambda events: rate_batch(stream, events),
            on_retry=gatherer.discard,
            batch_size=settings.rating_batch_size,
        )

    @app.timer(interval=settings.tick_interval_s)
    async def send_ticks() -> None:
        for partition in range(settings.partitions):
            await stage.topics["ticks"].send(value=b"tick", partition=partition)


def _now_ms() -> float:
    return time.time() * 1000
