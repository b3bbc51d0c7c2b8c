"""A worker's health, as `/healthz` (liveness) and `/readyz` (readiness) report it.

One `Health` object per worker process holds the facts; the faust app updates it (the loop-lag
watcher beats, the rebalance signals mark partitions assigned and revoked, the warm-up marks each
model loaded, the signal handler marks the worker stopping), and the metrics server's
thread reads it (streams/metrics.py serves `live()` and `ready()` beside /metrics). Plain state
and a lock, no faust or Kafka, so the logic is tested on its own.

- live: the event loop is responsive, i.e. the loop-lag watcher ticked within `live_within_s`.
  Before its first tick (faust still starting) the worker counts as alive for `startup_grace_s`,
  so a slow start is not killed, while one that never starts its loop is. While its models load
  (streams/worker.py loads them before faust starts, which may take many minutes) it is alive,
  and the grace counts from the end of the loading.
- ready: every model of the process loaded, started, partitions assigned, their streams resumed
  after the rebalance, and not shutting down; otherwise the first reason that holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

# Reasons /readyz gives with its 503, in the order they are checked.
SHUTTING_DOWN = "shutting down"
STARTING = "starting"
LOADING_MODEL = "loading model"
NOT_ASSIGNED = "no partitions assigned"
REBALANCING = "rebalancing"


class Health:
    """Liveness and readiness of one worker (see the module docstring); thread-safe."""

    def __init__(
        self,
        live_within_s: float = 10.0,
        startup_grace_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live_within_s = live_within_s
        self.startup_grace_s = startup_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._created = clock()
        self._last_beat: float | None = None
        self._assigned = 0  # partitions of the current assignment
        self._consuming = False  # the assignment's streams resumed (rebalance complete)
        self._models_loading: set[str] = set()
        self._stopping = False

    # Written by the worker (the event loop's thread).

    def beat(self) -> None:
        """The event loop ran a tick: it is responsive."""
        with self._lock:
            self._last_beat = self._clock()

    def mark_assigned(self, partitions: Iterable[object]) -> None:
        """A rebalance gave this worker `partitions` (its whole assignment); their streams
        resume only once the rebalance completes (`mark_consuming`)."""
        with self._lock:
            self._assigned = len(set(partitions))
            self._consuming = False

    def mark_revoked(self) -> None:
        """A rebalance took the partitions away; a new assignment follows."""
        with self._lock:
            self._assigned = 0
            self._consuming = False

    def mark_consuming(self) -> None:
        """The rebalance completed: tables recovered, the streams of the assignment resumed."""
        with self._lock:
            self._consuming = True

    def expect_model(self, model: str) -> None:
        """`model` is to be loaded before the worker consumes: not ready until `mark_model_loaded`."""
        with self._lock:
            self._models_loading.add(model)

    def mark_model_loaded(self, model: str) -> None:
        with self._lock:
            self._models_loading.discard(model)
            if not self._models_loading:
                # faust starts only now (streams/worker.py): its start-up grace begins here.
                self._created = self._clock()

    def mark_stopping(self) -> None:
        """Shutdown began: stop sending traffic here, for good."""
        with self._lock:
            self._stopping = True

    # Read by the metrics server's thread.

    def live(self) -> tuple[bool, str]:
        """(alive, why): whether the event loop ticked recently enough."""
        with self._lock:
            now = self._clock()
            if self._models_loading:  # in a thread: the loop has nothing to prove meanwhile
                return True, f"ok ({self._loading()})"
            if self._last_beat is None:
                waited = now - self._created
                if waited <= self.startup_grace_s:
                    return True, "ok (starting)"
                return False, f"event loop not started after {waited:.0f} s"
            silent = now - self._last_beat
            if silent <= self.live_within_s:
                return True, "ok"
            return False, f"event loop unresponsive for {silent:.0f} s"

    def ready(self) -> tuple[bool, str]:
        """(ready, why): "ready", or the first reason this worker should get no traffic."""
        with self._lock:
            if self._stopping:
                return False, SHUTTING_DOWN
            if self._models_loading:
                return False, self._loading()
            if self._last_beat is None:
                return False, STARTING
            if not self._assigned:
                return False, NOT_ASSIGNED
            if not self._consuming:
                return False, REBALANCING
            return True, "ready"

    def _loading(self) -> str:
        return f"{LOADING_MODEL} {', '.join(sorted(self._models_loading))}"
