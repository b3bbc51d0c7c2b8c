"""Competency-rating stage: gathers each prompt's responses and picks kin pairs.

A prompt's responses are gathered in the `rating-gather` table (changelogged, so a restarted
worker carries on where it stopped) until every model of the pool has answered or
`gather_timeout_s` has passed; then the kin rule picks pairs and they go to karma.pairs.
A finished prompt is remembered for `done_retention_s`, so a replayed response after a crash
is recognised and dropped instead of opening a second gather.

Timeouts need a clock inside the stream: faust only lets a table change while an event of
its partition is being processed. A timer therefore sends one tick per partition to the
internal `rating.ticks` topic (partitioned like karma.responses), and the agent expires the
gathers of that partition when the tick arrives.

Per-model state over time (responses and tokens in a hopping window) is kept in the
windowed `rating-model-stats` table, keyed `model@partition` because the stream is keyed by
prompt and each partition writes its own changelog partition.

Online competency (`competency.online`, on by default): the agent also reads the judge's
verdicts from karma.preferences (keyed by prompt, so co-partitioned with the responses) and
tallies them per model pair in the hopping `rating-competency` table (changelogged, so a
restarted worker recovers its evidence). A verdict is counted once: its id is remembered in
the prompt's gather entry. On every tick round the tallies of the current window, summed
over the partitions this worker holds, go through `agents.competency.assess`, and the
blended superiority is what pairing uses from then on. With several rating workers each one
learns from the verdicts of its own partitions: the same estimate on a share of the evidence.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from karma.agents.competency import Tally, assess, is_evidence, pair_key, score_of_first
from karma.agents.kinship import KinRule, Profiles, Scored, load_profiles
from karma.agents.policies import Policy, select_pairs
from karma.schemas.models import Candidate, KinPair, Preference, Response, pair_id_for
from karma.streams.app import Stage
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.metrics import (
    COMPARISONS,
    DUPLICATES,
    KIN_GAP,
    MESSAGES_IN,
    PAIRS,
    PENDING_PROMPTS,
    STAGE_LATENCY,
    SUPERIORITY,
)

STAGE = "rating"


@dataclass(frozen=True)
class Gathered:
    """The responses of one prompt, as kept in the gather table (plain JSON)."""

    prompt_id: str
    prompt_text: str
    responses: dict[str, dict[str, Any]]  # model -> {response_id, text, simulated}


@dataclass
class LiveCompetency:
    """The superiority pairing uses now (model -> blended value) and when it was computed."""

    superiority: dict[str, float]
    refreshed_at: float = 0.0  # ms


def make_pairs(
    gathered: Gathered,
    profiles: Profiles,
    rule: KinRule,
    policy: Policy = "kin",
    hybrid_weight: float = 0.5,
    superiority: Mapping[str, float] | None = None,
) -> list[KinPair]:
    """The pairs `policy` picks among one prompt's responses: pure, so it is tested without Kafka.
    `superiority` (model -> value, e.g. the blended online estimate) overrides the profiles'."""
    superiority = superiority or {}
    scored = [
        Scored(
            response_id=r["response_id"],
            model=model,
            superiority=superiority.get(model, profiles.superiority(model)),
            length=len(r["text"].split()),
        )
        for model, r in gathered.responses.items()
    ]
    pairs = []
    chosen_pairs = select_pairs(
        policy, scored, profiles, rule, seed_key=gathered.prompt_id, hybrid_weight=hybrid_weight
    )
    for chosen in chosen_pairs:
        a, b = (gathered.responses[chosen.a.model], gathered.responses[chosen.b.model])
        pairs.append(
            KinPair(
                pair_id=pair_id_for(gathered.prompt_id, a["response_id"], b["response_id"]),
                prompt_id=gathered.prompt_id,
                prompt_text=gathered.prompt_text,
                response_a=Candidate(
                    response_id=a["response_id"],
                    model=chosen.a.model,
                    text=a["text"],
                    superiority=chosen.a.superiority,
                    simulated=a["simulated"],
                ),
                response_b=Candidate(
                    response_id=b["response_id"],
                    model=chosen.b.model,
                    text=b["text"],
                    superiority=chosen.b.superiority,
                    simulated=b["simulated"],
                ),
                policy=policy,
                similarity=chosen.similarity,
                gap=chosen.gap,
            )
        )
    return pairs


def is_complete(responses: Iterable[str], expected: Iterable[str]) -> bool:
    return set(expected) <= set(responses)


def register(stage: Stage) -> None:
    settings = stage.settings
    app = stage.app
    profiles = load_profiles(settings.kin.profiles)
    rule = settings.kin.rule()
    expected = settings.model_names
    timeout_ms = settings.gather_timeout_s * 1000
    retention_ms = settings.done_retention_s * 1000

    gather = app.Table("rating-gather", default=None, partitions=settings.partitions)
    model_stats = app.Table("rating-model-stats", default=int, partitions=settings.partitions).hopping(
        settings.window_size_s, settings.window_step_s, expires=settings.window_size_s * 2
    )
    online = settings.competency.online
    competency = app.Table("rating-competency", default=float, partitions=settings.partitions).hopping(
        settings.window_size_s, settings.window_step_s, expires=settings.window_size_s * 2
    )
    # What pairing uses; refreshed from the competency table once per tick round.
    current = LiveCompetency(superiority={m: profiles.superiority(m) for m in expected})
    inputs = [stage.names.responses, stage.names.ticks] + ([stage.names.preferences] if online else [])
    source = app.topic(
        *inputs,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    async def finish(prompt_id: str, entry: dict[str, Any]) -> None:
        gathered = Gathered(prompt_id, entry["prompt_text"], entry["responses"])
        if len(gathered.responses) < 2:
            only = next(iter(gathered.responses), "none")
            await stage.dead_letter_prompt(
                prompt_id,
                entry["partition"],
                stage=STAGE,
                reason=f"prompt {prompt_id}: only {len(gathered.responses)} of {len(expected)} "
                f"models answered within {settings.gather_timeout_s:g} s ({only}); nothing to pair",
                error_type="unpaired",
            )
        chosen = make_pairs(
            gathered, profiles, rule, settings.policy, settings.kin.hybrid_weight, current.superiority
        )
        for pair in chosen:
            PAIRS.labels(pair.policy).inc()
            KIN_GAP.observe(pair.gap)
            await stage.publish(STAGE, "pairs", prompt_id, encode(pair))
        gather[prompt_id] = {**entry, "responses": {}, "done_at": _now_ms()}

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
        entry = gather.get(preference.prompt_id)
        if entry is not None:
            judged = entry.get("judged", [])
            if preference.preference_id in judged:
                DUPLICATES.labels(STAGE).inc()  # a replayed verdict: its evidence is already in
                return
            gather[preference.prompt_id] = {**entry, "judged": [*judged, preference.preference_id]}
        if not is_evidence(preference):
            return
        a, b = preference.response_a.model, preference.response_b.model
        key = pair_key(a, b)
        stem = f"{key[0]}|{key[1]}@{event.message.partition}"
        competency[f"{stem}:n"] += 1.0
        competency[f"{stem}:score"] += score_of_first(key, a, preference.winner)

    async def on_tick(event: Any) -> None:
        partition = event.message.partition
        now = _now_ms()
        if online and now - current.refreshed_at >= settings.tick_interval_s * 1000:
            current.refreshed_at = now
            refresh_competency()
        pending = 0
        for prompt_id, entry in list(gather.items()):
            if entry is None or entry["partition"] != partition:
                pending += entry is not None and entry.get("done_at") is None
                continue
            if entry.get("done_at") is not None:
                if now - entry["done_at"] > retention_ms:
                    gather.pop(prompt_id)
            elif now - entry["first_seen"] > timeout_ms:
                await finish(prompt_id, entry)
            else:
                pending += 1
        PENDING_PROMPTS.set(pending)

    async def on_response(event: Any) -> None:
        MESSAGES_IN.labels(STAGE).inc()
        try:
            response = decode(event.value, Response)
        except DecodeError as exc:
            await stage.dead_letter(event, stage=STAGE, reason=exc.reason, error_type=exc.kind)
            return
        entry = gather.get(response.prompt_id) or {
            "prompt_text": response.prompt_text,
            "partition": event.message.partition,
            "first_seen": _now_ms(),
            "responses": {},
            "done_at": None,
        }
        if entry.get("done_at") is not None or response.model in entry["responses"]:
            DUPLICATES.labels(STAGE).inc()  # a replay after a restart: already counted
            return
        model_stats[f"{response.model}@{event.message.partition}"] += 1
        entry["responses"][response.model] = {
            "response_id": response.response_id,
            "text": response.text,
            "simulated": response.simulated,
        }
        if is_complete(entry["responses"], expected):
            await finish(response.prompt_id, entry)
        else:
            gather[response.prompt_id] = entry

    @app.agent(source, name="rate")
    async def rate(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            if event.message.topic == stage.names.ticks:
                await on_tick(event)
                continue
            if event.message.topic == stage.names.preferences:
                await on_preference(event)
                continue
            with STAGE_LATENCY.labels(STAGE).time():
                await on_response(event)

    @app.timer(interval=settings.tick_interval_s)
    async def send_ticks() -> None:
        for partition in range(settings.partitions):
            await stage.topics["ticks"].send(value=b"tick", partition=partition)


def _now_ms() -> float:
    return time.time() * 1000
