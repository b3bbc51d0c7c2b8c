"""The verifier as a judge backend: no model calls, each answer checked against the prompt's reference.

For prompts that have a checkable answer (arithmetic, a short fact, code with tests) a label need
not be an opinion: the verifier scores each answer of a pair against the reference the prompt
carries in its metadata (`reference`), with the scorer the metadata names (`scorer`) or else the
judge's default (`judge.scorer`, streams/config.py), by agents/scoring.py. An answer is *right*
when its score is at least `RIGHT_AT` (the built-in scorers say 0 or 1; a user's own may give
partial credit). One right and one wrong: the right one wins; both right or both wrong: a tie.

It never guesses: a prompt without a reference, or a scorer that cannot be loaded, misbehaves or
raises, is a `BackendError` (kinds `no_reference` and `scorer`), which the judging stage turns into
a dead letter on the pair's message naming the prompt, the pair and its two models, as it does
any judge failure. The rule is `verifier_winner`, a pure function; `karma eval` reads it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from karma.agents.backends.base import BackendError, JudgeReply, JudgeRequest, ModelLoadError
from karma.agents.judge_prompt import RawVerdict
from karma.agents.scoring import REFERENCE_KEY, SCORER_KEY, ScorerError, score, scorer

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import KarmaSettings

VERIFIER = "verifier"
# At least half marks counts as right: the built-in scorers give 0 or 1, so for them this is
# simply "scored 1"; a partial-credit scorer of one's own decides how its scores cross the line.
RIGHT_AT = 0.5
DECIDED_CONFIDENCE = 1.0
TIE_CONFIDENCE = 0.5
NO_REFERENCE = "no_reference"  # the dead letter's error_type
SCORER_FAILED = "scorer"

VerifierWinner = Literal["A", "B", "tie"]


def is_right(value: float) -> bool:
    return value >= RIGHT_AT


def verifier_winner(score_first: float, score_second: float) -> VerifierWinner:
    """ "A" when only the answer shown first is right, "B" when only the second is, "tie" when
    both or neither are."""
    first, second = is_right(score_first), is_right(score_second)
    if first == second:
        return "tie"
    return "A" if first else "B"


class VerifierJudge:
    """The `Judge` of `judge.backend: verifier`. Every preference it labels says `judge: verifier`,
    whatever `judge.name` is, and carries both scores (`score_a`, `score_b`)."""

    backend: str = VERIFIER
    name: str = VERIFIER

    def __init__(self, default_scorer: str = "exact") -> None:
        self.default_scorer = default_scorer

    async def load(self) -> None:
        return None  # no model: the scorer was loaded when the judge was built

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        # In a worker thread: a user's scorer may take its time (running an answer's code, say),
        # and the event loop must go on heartbeating meanwhile. One thread per batch, so a
        # scorer is never called from two threads at once.
        return await asyncio.to_thread(self.check_batch, list(requests))

    def check_batch(self, requests: list[JudgeRequest]) -> list[JudgeReply | BackendError]:
        """Every pass of a batch; an answer is scored once, though both passes of its pair show it."""
        scored: dict[tuple[str, str, str], float] = {}
        return [self.check(request, scored) for request in requests]

    def check(
        self, request: JudgeRequest, scored: dict[tuple[str, str, str], float] | None = None
    ) -> JudgeReply | BackendError:
        """One pass: both answers scored against the reference (`scored` remembers scores by
        scorer, answer and reference), or why they cannot be."""
        where = f"prompt {request.prompt_id or '?'}"
        reference = request.metadata.get(REFERENCE_KEY)
        if reference is None or not reference.strip():
            return BackendError(
                f"{where} has no reference (metadata {REFERENCE_KEY!r}): the verifier labels nothing "
                f"without one ({request.first_model} vs {request.second_model})",
                kind=NO_REFERENCE,
            )
        name = request.metadata.get(SCORER_KEY) or self.default_scorer
        memo = {} if scored is None else scored

        def checked(answer: str) -> float:
            key = (name, answer, reference)
            if key not in memo:
                memo[key] = score(name, answer, reference)
            return memo[key]

        try:
            scores = (checked(request.first_text), checked(request.second_text))
        except ScorerError as exc:
            return BackendError(f"{where}: {exc}", kind=SCORER_FAILED)
        except Exception as exc:  # a user's scorer that raises: this prompt's problem, not the batch's
            why = f"{where}: scorer {name!r} raised {type(exc).__name__}: {exc}"
            return BackendError(why, kind=SCORER_FAILED)
        winner = verifier_winner(*scores)
        verdict = RawVerdict(
            winner=winner,
            confidence=TIE_CONFIDENCE if winner == "tie" else DECIDED_CONFIDENCE,
            rationale=f"verifier ({name}): shown first scored {scores[0]:g}, shown second {scores[1]:g}",
        )
        # simulated=False: a check is no simulation; the judging stage still marks the preference
        # simulated when the responses are.
        return JudgeReply(verdict, verdict.model_dump_json(), p_first=None, simulated=False, scores=scores)

    async def close(self) -> None:
        return None


def judge(settings: KarmaSettings) -> VerifierJudge:
    """The registry's entry point (agents/backends/__init__.py). The default scorer is loaded now:
    a `module:function` that does not import stops the worker at start with one line (exit code 3,
    as a model that cannot load), before it consumes anything, not at its first pair."""
    name = settings.judge.scorer
    try:
        scorer(name)
    except ScorerError as exc:
        raise ModelLoadError(VERIFIER, f"judge.scorer {name!r}", str(exc)) from None
    return VerifierJudge(name)
