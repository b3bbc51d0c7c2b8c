"""After table recovery, nothing is delivered while stream partitions are seeked.

The race itself needs a real broker and luck (see streams/recovery.py); this pins down the
order of operations that closes it, with faust's own completion step and a recording app.
"""

from __future__ import annotations

import asyncio
from unittest.mock import AsyncMock, MagicMock

from faust.types import TP

from karma.streams.config import KarmaSettings
from karma.streams.recovery import SeekSafeRecovery
from karma.streams.worker import create_app


def recording_app(calls: list[str]) -> MagicMock:
    def record(name: str, result: object = None) -> MagicMock:
        return MagicMock(side_effect=lambda *a, **k: calls.append(name) or result)

    def record_async(name: str) -> AsyncMock:
        return AsyncMock(side_effect=lambda *a, **k: calls.append(name))

    app = MagicMock()
    app.conf.stream_recovery_delay = 0
    app.conf.broker_request_timeout = 10.0
    app.consumer_generation_id = 1
    app.consumer.assignment = MagicMock(return_value={TP("karma.prompts", 0)})
    app.consumer.stop_flow = record("consumer.stop_flow")
    app.consumer.resume_partitions = record("consumer.resume_partitions")
    app.consumer.perform_seek = record_async("consumer.perform_seek")
    app.consumer.resume_flow = record("consumer.resume_flow")
    app.flow_control.resume = record("flow_control.resume (clears agent queues)")
    app._fetcher.maybe_start = record_async("fetcher.start")
    app.on_rebalance_complete.send = AsyncMock()
    app.assignor.assigned_standbys = MagicMock(return_value=set())
    return app


def test_flow_stops_before_the_seek_and_resumes_after() -> None:
    calls: list[str] = []
    tables = MagicMock()
    tables.values = MagicMock(return_value=[])
    tables.changelog_topics = set()
    recovery = SeekSafeRecovery(recording_app(calls), tables)

    asyncio.run(recovery.on_recovery_completed(generation_id=1))

    assert calls == [
        "consumer.stop_flow",
        "consumer.resume_partitions",
        "consumer.perform_seek",
        "flow_control.resume (clears agent queues)",
        "consumer.resume_flow",
        "fetcher.start",
    ]


def test_karma_apps_use_the_seek_safe_recovery() -> None:
    app = create_app(KarmaSettings(), roles=["rate"])
    assert isinstance(app.tables.recovery, SeekSafeRecovery)
