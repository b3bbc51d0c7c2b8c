"""Table recovery that cannot drop stream messages when it hands over to the agents.

faust-streaming 0.15.3 can lose messages when a worker with tables (the rating stage, or
`karma run`) starts on partitions that already have committed offsets, e.g. after a crash.
During changelog restore the fetcher is running; when restore completes,
`Recovery.on_recovery_completed` resumes the stream partitions, seeks them to their
committed offsets, and then resumes flow control, which clears every agent's queue. Records
fetched in the gap between "resume" and "seek" are delivered into those queues and move
faust's read offset past them, after the seek had reset it; the clear then throws them away,
and their re-fetched copies are discarded as already read. Nothing is processed for those
partitions until the next rebalance. (Seen in the SIGKILL end-to-end test: 3 of 56
runs, two of them beside a CPU hog; the worker log showed "DROPPED MESSAGE ROFF" for the re-fetched
records; cf. faust-streaming issue #596.)

The fix stops the consumer's flow before faust's own completion step: from then on the
fetcher delivers nothing (a delivery already under way finishes at its current message,
long before faust's seek returns), so the seek's reset of the read offsets stands; faust's
step then clears the queues and resumes the flow, and everything after the committed offset
is fetched and delivered again. At-least-once; the deterministic ids make repeats harmless.
"""

from __future__ import annotations

from faust.tables import TableManager
from faust.tables.recovery import Recovery


class SeekSafeRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()  # the parent resumes it after seeking
        await super().on_recovery_completed(generation_id)


class SeekSafeTableManager(TableManager):
    """faust's TableManager with SeekSafeRecovery: pass as `faust.App(TableManager=...)`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekSafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
