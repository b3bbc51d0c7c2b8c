"""An order-dependent verdict is a tie, recorded as inconsistent, never silently chosen."""

from __future__ import annotations

import pytest

from karma.agents.verdicts import resolve, unswap
from karma.schemas.models import Winner


def test_unswap_maps_positions_back_to_responses() -> None:
    assert unswap(Winner.A) is Winner.B
    assert unswap(Winner.B) is Winner.A
    assert unswap(Winner.TIE) is Winner.TIE


@pytest.mark.parametrize("winner", list(Winner))
def test_agreeing_verdicts_are_consistent(winner: Winner) -> None:
    assert resolve(winner, winner).winner is winner
    assert resolve(winner, winner).consistent


@pytest.mark.parametrize(
    ("ab", "ba"), [(Winner.A, Winner.B), (Winner.B, Winner.A), (Winner.A, Winner.TIE), (Winner.TIE, Winner.B)]
)
def test_disagreeing_verdicts_are_an_inconsistent_tie(ab: Winner, ba: Winner) -> None:
    resolution = resolve(ab, ba)
    assert resolution.winner is Winner.TIE
    assert not resolution.consistent
