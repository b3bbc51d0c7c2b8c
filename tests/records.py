"""Records the tests build by hand: the pydantic records of schemas/models.py with a default for
every field a test does not care about.

The fields that identify a record come first; the rest are keywords, and a test that depends on
a field's value passes it explicitly rather than relying on the default here. Every record is
simulated=True unless told otherwise, as the simulated models and judge mark theirs. Ids that
the stages derive are derived here the same way (`response_id_for`, `pair_id_for`), so that
hand-made answers, pairs and verdicts line up with one another and with what the pipeline emits.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

from karma.schemas.models import (
    Candidate,
    DeadLetter,
    KinPair,
    Preference,
    Response,
    Winner,
    pair_id_for,
    response_id_for,
)

PROMPT_TEXT = "Why?"


def answer_text(model: str) -> str:
    """What `model` answers when a test does not say."""
    return f"answer of {model}"


def candidate(
    model: str,
    response_id: str | None = None,
    *,
    prompt_id: str | None = None,
    text: str | None = None,
    superiority: float = 0.5,
    simulated: bool = True,
    model_version: int = 1,
) -> Candidate:
    """`model`'s response in a pair. Its id, unless given, is the one `response_id_for` gives its
    answer to `prompt_id`, or `r-<model>` without a prompt."""
    if response_id is None:
        response_id = f"r-{model}"
        if prompt_id is not None:
            response_id = response_id_for(prompt_id, model, version=model_version)
    return Candidate(
        response_id=response_id,
        model=model,
        text=answer_text(model) if text is None else text,
        superiority=superiority,
        simulated=simulated,
        model_version=model_version,
    )


def response(
    prompt_id: str,
    model: str,
    *,
    text: str | None = None,
    error: str | None = None,
    prompt_text: str = PROMPT_TEXT,
    num_tokens: int = 5,
    latency_ms: float = 1.0,
    simulated: bool = True,
    response_id: str | None = None,
    created_at_ms: int | None = None,
    prompt_metadata: dict[str, str] | None = None,
    model_version: int = 1,
) -> Response:
    """`model`'s answer to `prompt_id`, with the id `response_id_for` gives it; a failure record
    when `error` is set (its text, unless given, is then empty)."""
    if text is None:
        text = "" if error else answer_text(model)
    return Response(
        response_id=response_id_for(prompt_id, model, version=model_version)
        if response_id is None
        else response_id,
        prompt_id=prompt_id,
        prompt_text=prompt_text,
        model=model,
        text=text,
        backend="simulated",
        simulated=simulated,
        num_tokens=num_tokens,
        latency_ms=latency_ms,
        error=error,
        prompt_metadata=prompt_metadata or {},
        model_version=model_version,
        **_stamped(created_at_ms),
    )


def kin_pair(
    prompt_id: str,
    a: str | Candidate,
    b: str | Candidate,
    *,
    pair_id: str | None = None,
    prompt_text: str = PROMPT_TEXT,
    text: str | None = None,
    policy: str = "kin",
    similarity: float = 0.99,
    gap: float = 0.0,
    created_at_ms: int | None = None,
    prompt_metadata: dict[str, str] | None = None,
) -> KinPair:
    """The pair of `a` and `b` on `prompt_id`, each a candidate or a model's name. A name stands for
    the model's answer to the prompt (`candidate(name, prompt_id=prompt_id, text=text)`); the pair's
    id, unless given, is the one `pair_id_for` gives the two."""
    first, second = (
        side if isinstance(side, Candidate) else candidate(side, prompt_id=prompt_id, text=text)
        for side in (a, b)
    )
    return KinPair(
        pair_id=pair_id_for(prompt_id, first.response_id, second.response_id) if pair_id is None else pair_id,
        prompt_id=prompt_id,
        prompt_text=prompt_text,
        response_a=first,
        response_b=second,
        policy=policy,
        similarity=similarity,
        gap=gap,
        prompt_metadata=prompt_metadata or {},
        **_stamped(created_at_ms),
    )


class Verdict(TypedDict, total=False):
    """The judge's fields of a preference besides the winner; see `verdict_fields`."""

    consistent: bool
    verdict_ab: Winner
    verdict_ba: Winner
    confidence: float
    judge: str
    simulated: bool
    soft_label: float | None
    score_a: float | None
    score_b: float | None
    created_at_ms: int


def preference_on(pair: KinPair, winner: Winner = Winner.A, **verdict: Unpack[Verdict]) -> Preference:
    """The verdict on `pair` (`Preference.of_pair`): its ids, prompt, candidates, policy and gap."""
    return Preference.of_pair(pair, **verdict_fields(winner, **verdict))


def preference(
    prompt_id: str,
    a: Candidate,
    b: Candidate,
    winner: Winner = Winner.A,
    *,
    pair_id: str | None = None,
    prompt_text: str = PROMPT_TEXT,
    policy: str = "kin",
    gap: float = 0.0,
    **verdict: Unpack[Verdict],
) -> Preference:
    """A verdict on `a` and `b` with no pair built first (so no check that the two differ), under
    the pair's id: unless given, the one `pair_id_for` gives them."""
    pair_id = pair_id_for(prompt_id, a.response_id, b.response_id) if pair_id is None else pair_id
    return Preference(
        preference_id=pair_id,
        pair_id=pair_id,
        prompt_id=prompt_id,
        prompt_text=prompt_text,
        response_a=a,
        response_b=b,
        policy=policy,
        gap=gap,
        **verdict_fields(winner, **verdict),
    )


def verdict_fields(winner: Winner, **verdict: Unpack[Verdict]) -> dict[str, Any]:
    """A judge's fields of a preference: both orders name `winner` and the verdict is consistent
    when the winner is not a tie, confidence 0.9 from the simulated judge, unless told otherwise."""
    return {
        "winner": winner,
        "consistent": winner is not Winner.TIE,
        "verdict_ab": winner,
        "verdict_ba": winner,
        "confidence": 0.9,
        "judge": "simulated-judge",
        "simulated": True,
        **verdict,
    }


def dead_letter(
    source_topic: str,
    source_offset: int,
    *,
    source_partition: int = 0,
    reason: str = "undecodable",
    error_type: str = "decode",
    stage: str = "generation",
    prompt_id: str | None = None,
    key: bytes | None = None,
    value: bytes | None = None,
    record_id: str | None = None,
    models: list[str] | None = None,
    created_at_ms: int | None = None,
) -> DeadLetter:
    """A letter about the message at `source_offset` of `source_topic` (partition 0 unless given):
    by default, one the generation stage could not decode."""
    return DeadLetter(
        reason=reason,
        error_type=error_type,
        stage=stage,
        prompt_id=prompt_id,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        key=key,
        value=value,
        record_id=record_id,
        models=models or [],
        **_stamped(created_at_ms),
    )


def _stamped(created_at_ms: int | None) -> dict[str, int]:
    """`created_at_ms` when a test sets it; otherwise the model's own default (now)."""
    return {} if created_at_ms is None else {"created_at_ms": created_at_ms}
