"""Judging stage: each pair on karma.pairs is judged in both orders and becomes a preference.

Pairs are taken in batches (like generation) and both orders of every pair of the batch go
to the judge backend at once (`judge_batch`). A pass that fails for good (a server that keeps
failing, or a reply that is still not a valid verdict after `verdict_attempts`) sends the pair
to the dead-letter topic with the reason and the pair's two models: recorded as an error, never
guessed. The verifier judge's failures (a prompt with no reference, a scorer that fails) are
BackendErrors like any other and become the same letters (error_type `no_reference`, `scorer`).
"""

from __future__ import annotations

from typing import Any

from karma.agents.backends import BackendError, Judge, JudgeReply, JudgeRequest, make_judge
from karma.agents.judge_prompt import RawVerdict
from karma.agents.verdicts import resolve, unswap
from karma.schemas.models import Candidate, KinPair, Preference, Winner
from karma.streams.codecs import encode
from karma.streams.delivery import Outbox
from karma.streams.metrics import BACKEND_REQUESTS, VERDICTS
from karma.streams.stage import Stage

STAGE = "judging"


def requests_for(pair: KinPair, seed: int = 0) -> tuple[JudgeRequest, JudgeRequest]:
    """Both passes of a pair: A shown first, then B shown first. Each carries the superiority of
    the model shown first and second (swapped with the answers), for the zebra judge, and the
    prompt's id and metadata, for the verifier."""
    a, b = pair.response_a, pair.response_b

    def shown(first: Candidate, second: Candidate) -> JudgeRequest:
        return JudgeRequest(
            pair.pair_id,
            pair.prompt_text,
            first.text,
            second.text,
            first.model,
            second.model,
            seed,
            first_superiority=first.superiority,
            second_superiority=second.superiority,
            prompt_id=pair.prompt_id,
            metadata=pair.prompt_metadata,
        )

    return shown(a, b), shown(b, a)


def _winner(verdict: RawVerdict) -> Winner:
    return {"A": Winner.A, "B": Winner.B, "tie": Winner.TIE}[verdict.winner]


def resolve_pair(pair: KinPair, first: JudgeReply, second: JudgeReply, judge_name: str) -> Preference:
    """The preference from the two passes (`second` saw B first): pure, tested without Kafka."""
    verdict_ab, verdict_ba = _winner(first.verdict), unswap(_winner(second.verdict))
    resolution = resolve(verdict_ab, verdict_ba)
    confidence = (first.verdict.confidence + second.verdict.confidence) / 2 if resolution.consistent else 0.5
    # Simulated data when the judge or either response is: a real judge (or the zebra rule) on
    # simulated answers does not make them training data.
    simulated = any((first.simulated, second.simulated, pair.response_a.simulated, pair.response_b.simulated))
    return Preference.of_pair(
        pair,
        winner=resolution.winner,
        consistent=resolution.consistent,
        verdict_ab=verdict_ab,
        verdict_ba=verdict_ba,
        confidence=confidence,
        judge=judge_name,
        simulated=simulated,
        soft_label=soft_label_of(first.p_first, second.p_first),
        **scores_of(first.scores, second.scores),
    )


def scores_of(
    scores_ab: tuple[float, float] | None, scores_ba: tuple[float, float] | None
) -> dict[str, float | None]:
    """score_a and score_b from both passes (the second saw B first): each answer's mean over the
    passes that scored it; None when no pass did (every judge but the verifier)."""
    a = [s for s in (scores_ab and scores_ab[0], scores_ba and scores_ba[1]) if s is not None]
    b = [s for s in (scores_ab and scores_ab[1], scores_ba and scores_ba[0]) if s is not None]
    return {"score_a": sum(a) / len(a) if a else None, "score_b": sum(b) / len(b) if b else None}


def soft_label_of(p_first_ab: float | None, p_first_ba: float | None) -> float | None:
    """P(A is better) from both passes' log-probabilities: in the second pass A was shown second,
    so its P(first wins) is P(B); the two orders are averaged, which cancels position bias."""
    estimates = [p for p in (p_first_ab, None if p_first_ba is None else 1.0 - p_first_ba) if p is not None]
    return sum(estimates) / len(estimates) if estimates else None


async def judge_batch(judge: Judge, pairs: list[tuple[Any, KinPair]], outbox: Outbox, seed: int = 0) -> None:
    """Judges a batch of decoded pairs (each with its event): both orders of every pair go to the
    judge at once, and each pair becomes a preference, or a dead letter naming the pair's two
    models when a pass failed for good. What the judging agent runs per batch."""
    if not pairs:
        return
    replies = await judge.judge([r for _, pair in pairs for r in requests_for(pair, seed)])
    for i, (event, pair) in enumerate(pairs):
        models = (pair.response_a.model, pair.response_b.model)
        first, second = replies[2 * i], replies[2 * i + 1]
        for reply in (first, second):
            outcome = reply.kind if isinstance(reply, BackendError) else "ok"
            BACKEND_REQUESTS.labels(STAGE, judge.backend, judge.name, outcome).inc()
        error = next((r for r in (first, second) if isinstance(r, BackendError)), None)
        if error is not None:
            await outbox.dead_letter(
                event,
                reason=f"pair {pair.pair_id}: {error.reason}",
                error_type=error.kind,
                prompt_id=pair.prompt_id,
                models=models,
            )
            continue
        assert isinstance(first, JudgeReply) and isinstance(second, JudgeReply)
        preference = resolve_pair(pair, first, second, judge.name)
        VERDICTS.labels(preference.winner.value, str(preference.consistent).lower()).inc()
        # Refused by the broker, it is replaced by a letter on the pair's message, which
        # settles the pair for `karma audit` as a judge's letter does.
        await outbox.publish(
            "preferences",
            pair.prompt_id,
            encode(preference),
            record_id=preference.preference_id,
            models=models,
            cause=event,
        )


def register(stage: Stage) -> None:
    settings = stage.settings
    judge: Judge = make_judge(settings)
    # Loaded before the worker consumes (/readyz: "loading model X" meanwhile), closed when it stops.
    stage.expect_model(f"{judge.name} (judge)", judge.load)
    stage.closers.append(judge.close)

    async def judge_events(events: list[Any], outbox: Outbox) -> None:
        pairs = await stage.decode_batch(events, KinPair, outbox)
        await judge_batch(judge, pairs, outbox, settings.seed)

    @stage.app.agent(stage.topics["pairs"], name="judge")
    async def judge_pairs(stream):  # type: ignore[no-untyped-def]
        await stage.in_batches(stream, STAGE, judge_events)
