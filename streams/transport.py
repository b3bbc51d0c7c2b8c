"""faust's aiokafka transport with a drain loop that costs one task per fetched batch, not four
per message.

faust-streaming 0.15.3 hands every fetched record to the agents through
`await self.wait_first(callback(message), self.suspend_flow.wait())`: four new tasks and an
`asyncio.wait` per record, so that a delivery blocked on a full agent queue is abandoned when
a rebalance stops the flow. Measured with `benchmarks/bench_faust_floor.py`, that is most of
what a faust agent costs: an agent doing nothing drained 6,200 msg/s with it and 15,600 msg/s
without it, beside a raw aiokafka ceiling of 25,000 msg/s in the same run.

Here a whole batch from `getmany` is delivered inside one task, raced against the flow being
stopped, exactly as faust races each record. The flow is also checked before each record, so
once it stops nothing more is delivered (faust's own records after a stop are skipped too; the
seek that follows every stop re-reads them). Gap tracking, commits every `commit_every` acks,
and yielding to the loop every 100 records are faust's, unchanged.

Two fetch-position fixes, for records that were fetched but never delivered (see
`BatchDrainConsumer._getmany` and `seek_to_committed`): faust hands the consumer thread its live set
of active partitions, which aiokafka re-reads while a fetch waits (and reads as "every
partition" once empty), so a fetch issued during changelog recovery came back with the paused
stream partitions' backlog after recovery ended, and faust dropped it (the flow was stopped, or
the partition not active); the seek that follows re-reads only partitions with a committed
offset. A worker restarted before its predecessor had committed lost that backlog for good and
consumed nothing more (seen in tests/e2e/test_faults.py, the rating worker killed mid-stream).

A rebalance first lets the stages finish the batch in hand and commits it
(`on_partitions_revoked`), since faust forgets the revoked partitions' acks before it commits.

Plugged in by URL scheme: `karma://host:port` (registered in pyproject.toml under the entry
point group `faust.transports`, faust's own way to add a transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING, RecordMap
from faust.transport.drivers import aiokafka
from faust.types import TP, Message
from mode import Service, ServiceT

SCHEME = "karma"

# faust yields to the event loop this often while delivering a batch.
_YIELD_EVERY = 100


class BatchDrainConsumer(aiokafka.Consumer):
    """aiokafka.Consumer whose fetcher delivers each fetched batch in one task, which never
    leaves a partition's position past records it fetched and did not deliver, and which commits
    the batch in hand before a rebalance takes its partitions away."""

    # Set by the stages (streams/stage.py `Stage.in_batches`): returns once no batch is handled.
    finish_in_hand: Callable[[], Awaitable[None]] | None = None

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """A rebalance: no new batch is handed out, the events queued are handed back (faust's
        flow control, streams/stage.py `Stage.batches`), the stages finish the batch in hand, and
        what they acked is committed, all before faust's own step, whose first act is to forget
        the revoked partitions' acks (faust-streaming 0.15.3 `Consumer.on_partitions_revoked`):
        otherwise the next owner does the batch in hand again."""
        if self.finish_in_hand is not None and self.assignment():
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
            await self.finish_in_hand()
            try:
                await self.commit()
            except Exception as exc:  # e.g. this member was dropped already: the next owner redoes it
                self.log.warning("commit before the rebalance failed (redelivered): %r", exc)
        await super().on_partitions_revoked(revoked)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> RecordMap:
        """A fetch of the partitions active now, not of faust's live set: aiokafka re-reads the
        set it is given each time a fetch wakes while it waits (up to `timeout`), and takes an
        empty one for every assigned partition. With the live set, a fetch issued for the
        changelogs during recovery returned the stream partitions' records once faust paused
        the changelogs (set empty) or resumed the streams (set changed) before the fetch woke;
        faust then dropped them (flow stopped, or partition not active when asked), and
        aiokafka's position had moved past them."""
        if active_partitions is None:  # a client-only app fetches everything
            return await super()._getmany(None, timeout)
        return await super()._getmany(frozenset(active_partitions), timeout)  # type: ignore[arg-type]

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """faust's seek to the committed offsets (its `perform_seek` calls this after every flow
        stop), and to the beginning for a stream partition with none, where aiokafka leaves the
        position as it is: records fetched there and dropped at a flow stop (a rebalance, or
        recovery's end) are re-read rather than skipped, as they are on a partition with a
        committed offset. At-least-once: what was handled but not yet committed is handled
        again, as after any seek to committed offsets."""
        committed = await super().seek_to_committed()
        uncommitted = [tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)]
        if uncommitted:
            await cast(aiokafka.AIOKafkaConsumerThread, self._thread).seek_to_beginning(*uncommitted)
        return committed

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - faust's thread
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = cast(AsyncGenerator[tuple[TP, Message], None], self.getmany(timeout=1.0))
                await self.sleep(0)  # getmany may return at once, again and again
                if self.should_stop:
                    continue
                # The fetch itself (the first record) is awaited outside the race, as in faust:
                # it is a call into the consumer's thread, which must not be cancelled midway.
                first = await anext(records, None)
                if first is not None:
                    await self.wait_first(self._deliver(first, records), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(
        self, first: tuple[TP, Message], rest: AsyncGenerator[tuple[TP, Message], None]
    ) -> None:
        """Hands a fetched batch to the agents, in order, until the flow stops. Everything in
        here may be cancelled at an await: only deliveries to the agents' queues wait, and the
        commit is shielded (it calls into the consumer's thread)."""
        callback = self.callback
        read_offset = self._read_offset
        since_yield = 0
        try:
            tp, message = first
            while True:
                if self.suspend_flow.is_set():
                    return  # a rebalance or a recovery: the seek that follows re-reads the rest
                since_yield += 1
                if since_yield > _YIELD_EVERY:
                    await asyncio.sleep(0)
                    since_yield = 0
                offset = message.offset
                r_offset = read_offset[tp]
                if r_offset is None or offset >= r_offset:
                    if r_offset and offset - r_offset > 1 and self.app.topics.acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await asyncio.shield(self.commit())
                    await callback(message)
                    read_offset[tp] = offset
                else:
                    self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                # The rest of the batch is in memory: no await below reaches the broker.
                following = await anext(rest, None)
                if following is None:
                    return
                tp, message = following
        finally:
            await rest.aclose()


class Transport(aiokafka.Transport):
    """faust's aiokafka transport with BatchDrainConsumer; URL scheme `karma://`."""

    Consumer: Any = BatchDrainConsumer
