"""The ZEBRA labeller as a judge backend: no model calls, the more competent model wins.

ZEBRA (zero-annotation labelling; Jung, Park, Jung, "KARMA/ZEBRA", arXiv 2502.18744, Findings of
EMNLP 2025) labels a pair from the models' competency alone: the response of the model with the
higher superiority is chosen, and equal superiority is a tie. It assumes that superiority (the
benchmark profile, or the blended online value) is a proxy for the quality of every answer a
model writes; it never reads the answers.

The rule is `zebra_winner`, a pure function. `ZebraJudge` wraps it in the `Judge` protocol of
agents/backends/__init__.py so that the judging stage runs it like any judge, in both orders: the rule
depends on the models, not the position, so the two passes always agree. It reads the
superiorities the judging stage puts on each request (`JudgeRequest.first_superiority` and
`second_superiority`); a request without them is an error, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from karma.agents.backends.base import BackendError, JudgeReply, JudgeRequest
from karma.agents.judge_prompt import RawVerdict

if TYPE_CHECKING:  # annotations only: config reads the backends' names, not the reverse
    from karma.streams.config import KarmaSettings

ZEBRA = "zebra"
ZebraWinner = Literal["A", "B", "tie"]
DECIDED_CONFIDENCE = 1.0  # the rule is certain of its own answer; whether it is right is another matter
TIE_CONFIDENCE = 0.5


def zebra_winner(superiority_first: float, superiority_second: float) -> ZebraWinner:
    """ "A" when the model shown first is the more superior, "B" when the second is, "tie" when
    they are exactly equal (no tolerance: a threshold would be a tuning knob the paper lacks).
    A non-finite superiority raises ValueError: there is no order to read from it."""
    if not (math.isfinite(superiority_first) and math.isfinite(superiority_second)):
        raise ValueError(f"superiority must be finite, got {superiority_first!r} and {superiority_second!r}")
    if superiority_first > superiority_second:
        return "A"
    if superiority_second > superiority_first:
        return "B"
    return "tie"


def zebra_verdict(superiority_first: float, superiority_second: float) -> RawVerdict:
    """The rule's answer as a judge's verdict, with a rationale naming both superiorities."""
    winner = zebra_winner(superiority_first, superiority_second)
    first, second = _shown(superiority_first, superiority_second)
    return RawVerdict(
        winner=winner,
        confidence=TIE_CONFIDENCE if winner == "tie" else DECIDED_CONFIDENCE,
        rationale=f"zebra: superiority {first} (shown first) vs {second} (shown second)",
    )


def _shown(x: float, y: float) -> tuple[str, str]:
    """Three decimals, unless that would print two different values the same (then in full), so
    a rationale never shows a tie-looking pair that was decided."""
    short = f"{x:.3f}", f"{y:.3f}"
    return short if short[0] != short[1] or x == y else (repr(x), repr(y))


class ZebraJudge:
    """The `Judge` of `judge.backend: zebra`. Every preference it labels says `judge: zebra`,
    whatever `judge.name` is: the name must tell a reader the label came from no model."""

    backend: str = ZEBRA
    name: str = ZEBRA

    async def load(self) -> None:
        return None  # no model: a rule

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[JudgeReply | BackendError]:
        replies: list[JudgeReply | BackendError] = []
        for request in requests:
            missing = [
                side
                for side, value in (
                    ("first", request.first_superiority),
                    ("second", request.second_superiority),
                )
                if value is None or not math.isfinite(value)
            ]
            if missing:
                replies.append(
                    BackendError(
                        f"zebra needs both models' superiority and labels nothing without it: the "
                        f"answer shown {' and '.join(missing)} ({self._model(request, missing)}) "
                        "has no finite superiority",
                        kind="backend",
                    )
                )
                continue
            assert request.first_superiority is not None and request.second_superiority is not None
            verdict = zebra_verdict(request.first_superiority, request.second_superiority)
            # simulated=False: zebra is a rule, not a simulation; the judging stage still marks the
            # preference simulated when the responses are.
            replies.append(JudgeReply(verdict, verdict.model_dump_json(), p_first=None, simulated=False))
        return replies

    @staticmethod
    def _model(request: JudgeRequest, sides: list[str]) -> str:
        return ", ".join(request.first_model if side == "first" else request.second_model for side in sides)

    async def close(self) -> None:
        return None


def judge(settings: KarmaSettings) -> ZebraJudge:
    """The registry's entry point (agents/backends/__init__.py)."""
    return ZebraJudge()
