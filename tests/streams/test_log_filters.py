"""A broker that is down makes aiokafka log the same error several times a second; the filter
keeps one per 30 s per kind and says how many it dropped."""

from __future__ import annotations

import logging

import pytest

from karma.streams.log_filters import NOISY_LOGGERS, RepeatFilter, quiet_repeats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(
    message: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka"
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_a_repeated_error_passes_once_per_window_and_then_counts_what_was_dropped() -> None:
    clock = Clock()
    repeats = RepeatFilter(window_s=30.0, clock=clock)
    passed = []
    for step in range(200):  # five a second for 40 s, as while a node is down
        clock.now = step * 0.2
        line = record("Unable connect to node with id %s: %s", 3, "[Errno 111] Connect call failed")
        if repeats.filter(line):
            passed.append((clock.now, line.getMessage()))
    assert [at for at, _ in passed] == [0.0, 30.0]
    assert passed[0][1] == "Unable connect to node with id 3: [Errno 111] Connect call failed"
    assert passed[1][1].endswith("(and 149 more like it in 30 s)")


def test_other_kinds_and_lower_levels_are_not_held_back() -> None:
    repeats = RepeatFilter(window_s=30.0, clock=Clock())
    assert repeats.filter(record("Unable connect to node with id %s", 1))
    assert repeats.filter(record("Unable connect to node with id %s", 2))  # another node
    assert repeats.filter(record("Unable connect to node with id %s", 1, level=logging.WARNING))
    assert repeats.filter(record("Unable connect to node with id %s", 1, name="aiokafka.conn"))
    assert not repeats.filter(record("Unable connect to node with id %s", 1))
    for _ in range(3):
        assert repeats.filter(record("Sending metadata request", level=logging.INFO))


def test_quiet_repeats_puts_one_filter_on_each_noisy_logger(caplog: pytest.LogCaptureFixture) -> None:
    quiet_repeats()
    quiet_repeats()  # a second CLI invocation in one process replaces, not stacks
    try:
        for name in NOISY_LOGGERS:
            assert sum(isinstance(f, RepeatFilter) for f in logging.getLogger(name).filters) == 1
        with caplog.at_level(logging.ERROR, logger="aiokafka.consumer.fetcher"):
            for _ in range(10):
                logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from %s", 3)
        assert [r.getMessage() for r in caplog.records] == ["Failed fetch messages from 3"]
    finally:
        for name in NOISY_LOGGERS:
            for f in [f for f in logging.getLogger(name).filters if isinstance(f, RepeatFilter)]:
                logging.getLogger(name).removeFilter(f)
