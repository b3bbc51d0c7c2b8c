"""`karma ...` with a fault injected into the rating stage: every other write of its state raises,
as a transient failure right before the state of a handled batch is written would. Each batch
then fails once and is handled again (`Stage.handle_safely`'s retry): tests/e2e/test_delivery.py
runs `python -m tests.e2e.flaky_state run` to check that such a retry counts no verdict twice.
Test code only: nothing in the project imports it."""

from __future__ import annotations

from typing import Any

from karma.agents.gathering import Gatherer
from karma.cli import main

_write_state = Gatherer.flush
_calls = 0


def _flaky_flush(self: Gatherer, *args: Any, **kwargs: Any) -> None:
    global _calls
    _calls += 1
    if _calls % 2:
        raise RuntimeError("injected fault: the state write of this batch failed")
    _write_state(self, *args, **kwargs)


Gatherer.flush = _flaky_flush  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
