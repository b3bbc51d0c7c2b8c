"""Judge-verdict resolution: pure functions, no Kafka.

A pair is judged twice, once in each order. A verdict that follows the responses when their
order is swapped is consistent; one that follows the position is position bias, and the pair
is recorded as a TIE with consistent=False, never silently given to either side.
"""

from __future__ import annotations

from dataclasses import dataclass

from karma.schemas.models import Winner


def unswap(verdict_on_swapped: Winner) -> Winner:
    """Maps a verdict given with B shown first back to the A/B names of the pair."""
    return {Winner.A: Winner.B, Winner.B: Winner.A, Winner.TIE: Winner.TIE}[verdict_on_swapped]


@dataclass(frozen=True)
class Resolution:
    winner: Winner
    consistent: bool


def resolve(verdict_ab: Winner, verdict_ba: Winner) -> Resolution:
    """Both verdicts are in A/B terms (verdict_ba already unswapped)."""
    if verdict_ab == verdict_ba:
        return Resolution(winner=verdict_ab, consistent=True)
    return Resolution(winner=Winner.TIE, consistent=False)
