"""Keeps a client's retry loops from flooding the log while a broker is down.

aiokafka logs one ERROR per reconnect attempt and per failed fetch or metadata request, several
a second for as long as a broker is away: about 200 lines in the 40 s a node of the local cluster
was down in tests/e2e/test_cluster.py, each saying the same thing. `RepeatFilter` lets the first
record of a kind through, drops the repeats for `window_s`, and lets the next one through with
how many it dropped, so an operator still sees that, how often and for how long it happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["NOISY_LOGGERS", "RepeatFilter", "quiet_repeats"]

# The loggers of aiokafka's retry loops (connections, metadata, fetches, produce, the group
# coordinator). A filter on a logger sees only that logger's own records, so each is named.
NOISY_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.sender",
)
DEFAULT_WINDOW_S = 30.0


@dataclass
class _Seen:
    since: float  # when the record last let through was logged
    dropped: int = 0


class RepeatFilter(logging.Filter):
    """Lets a record through once per `window_s` per kind (logger, level, message); the record
    after a quiet spell says how many like it were dropped."""

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # debug and info are asked for; leave them whole
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self.window_s:
            seen.dropped += 1
            return False
        if seen is not None and seen.dropped:
            spell = now - seen.since
            record.msg = f"{record.getMessage()} (and {seen.dropped} more like it in {spell:.0f} s)"
            record.args = None
        self._seen[key] = _Seen(since=now)
        if len(self._seen) > 1024:  # many kinds: forget the oldest rather than grow
            del self._seen[next(iter(self._seen))]
        return True


def quiet_repeats(loggers: Iterable[str] = NOISY_LOGGERS, window_s: float = DEFAULT_WINDOW_S) -> None:
    """Puts one RepeatFilter on each of `loggers` (once: calling again replaces it). On loggers,
    not handlers, so it holds when faust replaces the root handlers at a worker's start."""
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatFilter)]:
            logger.removeFilter(old)
        logger.addFilter(RepeatFilter(window_s))
