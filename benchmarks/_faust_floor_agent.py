"""The worker of bench_faust_floor.py: a faust agent that does nothing but read (and write one
message in a hundred, so the reader can date the run). Args: BOOTSTRAP MODE (plain|batched)."""

from __future__ import annotations

import sys
import tempfile

import faust

from karma.streams import transport
from karma.streams.app import PerMessageQuietMonitor
from karma.streams.config import KarmaSettings
from karma.streams.stage import Stage, raw_topic

bootstrap, mode = sys.argv[1], sys.argv[2]
# The same faust settings as the karma workers (streams/app.py new_stage).
app = faust.App(
    f"floor-{mode}",
    broker=f"{transport.SCHEME}://{bootstrap}",
    store="memory://",
    datadir=tempfile.mkdtemp(prefix="karma-floor-"),  # not the current directory
    topic_partitions=4,
    web_enabled=False,
    autodiscover=False,
    consumer_auto_offset_reset="earliest",
    broker_max_poll_records=2000,
    stream_buffer_maxsize=16384,
    producer_linger_ms=5,
    monitor=PerMessageQuietMonitor(),
    broker_session_timeout=6,
    broker_heartbeat_interval=1.5,
    broker_rebalance_timeout=6,
)
source = raw_topic(app, "floor.in", partitions=4)
out = raw_topic(app, f"floor.out.{mode}", partitions=4)
stage = Stage(settings=KarmaSettings(), app=app, names=None, topics={})  # type: ignore[arg-type]


@app.agent(source)
async def read(stream):  # type: ignore[no-untyped-def]
    async def handle(events: list) -> None:  # type: ignore[type-arg]
        for event in events:
            if event.message.offset % 100 == 0:
                await out.send(key=event.key, value=b"x")

    if mode == "plain":  # faust's own iteration, acks by faust
        async for event in stream.events():
            await handle([event])
    else:  # the stages' batching (streams/stage.py Stage.in_batches)
        await stage.in_batches(stream, "floor", handle, batch_size=256)


worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
worker.spinner = None
worker.execute_from_commandline()
