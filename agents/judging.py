"""Judging stage: each pair on karma.pairs is judged in both orders and becomes a preference."""

from __future__ import annotations

from karma.agents.kinship import load_profiles
from karma.agents.simulated import SimulatedJudge
from karma.agents.verdicts import resolve, unswap
from karma.schemas.models import KinPair, Preference
from karma.streams.app import Stage
from karma.streams.codecs import DecodeError, decode, encode
from karma.streams.config import KarmaSettings
from karma.streams.metrics import MESSAGES_IN, STAGE_LATENCY, VERDICTS

STAGE = "judging"


def build_judge(settings: KarmaSettings) -> SimulatedJudge:
    profiles = load_profiles(settings.kin.profiles)
    qualities = {
        spec.name: spec.latent_quality if spec.latent_quality is not None else profiles.superiority(spec.name)
        for spec in settings.pool
    }
    return SimulatedJudge(
        qualities=qualities,
        position_bias=settings.judge.position_bias,
        temperature=settings.judge.temperature,
        length_bias=settings.judge.length_bias,
        seed=settings.seed,
        name=settings.judge.name,
    )


def judge_pair(judge: SimulatedJudge, pair: KinPair) -> Preference:
    """Asks the judge twice, swapping the order, and resolves the two verdicts."""
    a, b = pair.response_a, pair.response_b
    length_a, length_b = len(a.text.split()), len(b.text.split())
    first = judge.judge(pair.pair_id, a.model, b.model, length_a, length_b)
    second = judge.judge(pair.pair_id, b.model, a.model, length_b, length_a)
    verdict_ab, verdict_ba = first.winner, unswap(second.winner)
    resolution = resolve(verdict_ab, verdict_ba)
    return Preference(
        preference_id=pair.pair_id,
        pair_id=pair.pair_id,
        prompt_id=pair.prompt_id,
        prompt_text=pair.prompt_text,
        response_a=a,
        response_b=b,
        winner=resolution.winner,
        consistent=resolution.consistent,
        verdict_ab=verdict_ab,
        verdict_ba=verdict_ba,
        confidence=(first.confidence + second.confidence) / 2 if resolution.consistent else 0.5,
        judge=judge.name,
        simulated=True,
        policy=pair.policy,
        gap=pair.gap,
    )


def register(stage: Stage) -> None:
    judge = build_judge(stage.settings)

    @stage.app.agent(stage.topics["pairs"], name="judge")
    async def judge_pairs(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            MESSAGES_IN.labels(STAGE).inc()
            with STAGE_LATENCY.labels(STAGE).time():
                try:
                    pair = decode(event.value, KinPair)
                except DecodeError as exc:
                    await stage.dead_letter(event, stage=STAGE, reason=exc.reason, error_type=exc.kind)
                    continue
                preference = judge_pair(judge, pair)
                VERDICTS.labels(preference.winner.value, str(preference.consistent).lower()).inc()
                await stage.publish(STAGE, "preferences", pair.prompt_id, encode(preference))
