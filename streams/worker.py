"""A worker: the stages of some roles on one faust app, run until SIGINT/SIGTERM. The body of
`karma worker` and `karma run`.

Shutdown (SIGTERM or SIGINT): /readyz turns 503 "shutting down" at once; faust stops fetching,
waits for the in-flight batches (a batch is acked, so committed, only once handled: one cut
short stays uncommitted and is redelivered after a restart), commits, then the stages close
their model backends (`Stage.close_backends`, on faust's `on_before_shutdown`) and the process
exits 0. A watchdog thread exits the process after `shutdown_timeout_s` should any of that hang,
and a second signal exits at once: an operator who asks twice means it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Iterable
from typing import Any

import faust

from karma.agents import generation, judging, rating
from karma.streams.app import ROLES, USES, changelog_topics, new_stage
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.kafka_clients import check_connection
from karma.streams.metrics import serve_metrics
from karma.streams.sizes import PRODUCER_MAX_BATCH_BYTES, RecordLimits, read_limits
from karma.streams.stage import Stage
from karma.streams.topics import TOPICS, ensure_topics
from karma.streams.versions import check_versions

log = logging.getLogger(__name__)

# Exit codes of a shutdown cut short: the watchdog's, and a second signal's (128 + SIGTERM).
EX_SHUTDOWN_TIMEOUT = 1
EX_SECOND_SIGNAL = 128 + signal.SIGTERM


def create_stage(
    settings: KarmaSettings,
    roles: Iterable[str] = ROLES,
    models: list[ModelSpec] | None = None,
) -> Stage:
    """The stage of a faust app with the agents of `roles`; `models` narrows generation to part
    of the pool."""
    roles = tuple(roles)
    stage = new_stage(settings, roles, models)
    if "generate" in roles:
        generation.register(stage, models or settings.pool)
    if "rate" in roles:
        rating.register(stage)
    if "judge" in roles:
        judging.register(stage)
    return stage


def create_app(
    settings: KarmaSettings,
    roles: Iterable[str] = ROLES,
    models: list[ModelSpec] | None = None,
) -> faust.App:
    """A faust app with the agents of `roles`; `models` narrows generation to part of the pool."""
    return create_stage(settings, roles, models).app


class KarmaWorker(faust.Worker):
    """faust's Worker with a bounded shutdown (see the module docstring). mode's Worker runs
    `_schedule_shutdown` on the first SIGINT/SIGTERM and ignores any later one."""

    def __init__(self, stage: Stage, *args: Any, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(stage.app, *args, **kwargs)
        self.stage = stage
        self.shutdown_timeout_s = shutdown_timeout_s

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        if not self._signal_stop_time:
            self.stage.health.mark_stopping()
            log.warning("%s: shutting down (within %g s)", signal.name, self.shutdown_timeout_s)
            self._exit_on_second_signal()
            watchdog = threading.Timer(self.shutdown_timeout_s, _exit_now, (EX_SHUTDOWN_TIMEOUT, "timed out"))
            watchdog.daemon = True  # a clean exit does not wait for it
            watchdog.start()
        super()._schedule_shutdown(signal)

    async def _stop_on_signal(self, signal: signal.Signals) -> None:
        # First the batches being handled, then a commit of everything handled, then faust's
        # stop (which closes the backends, see streams/app.py `_track_health`). faust's own
        # "wait for streams" is off (`stream_wait_empty`, streams/app.py): it would also work off
        # every event already fetched (a whole backlog's worth of buffers, tens of seconds with a
        # slow model); those are handed back instead.
        await self.stage.finish_batches()
        try:
            await self.stage.app.consumer.commit()
        except Exception as exc:  # e.g. signalled before the consumer started: nothing to commit
            log.warning("commit before shutdown failed (uncommitted work is redelivered): %r", exc)
        await super()._stop_on_signal(signal)

    def _exit_on_second_signal(self) -> None:
        # A plain Python handler rather than the loop's: it runs even while the event loop is
        # stuck, which is when an operator signals twice.
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.loop.remove_signal_handler(signum)
            signal.signal(signum, lambda *_: _exit_now(EX_SECOND_SIGNAL, "second signal"))


def _exit_now(code: int, why: str) -> None:
    """Exits without unwinding (no finally blocks, no faust shutdown): what was not committed is
    redelivered to the group."""
    log.critical("shutdown %s: exiting at once with code %d, uncommitted work is redelivered", why, code)
    logging.shutdown()
    os._exit(code)


async def prepare_topics(
    settings: KarmaSettings, app: faust.App, roles: tuple[str, ...] = ROLES
) -> RecordLimits:
    """Creates the topics the roles use (the tables' changelogs included) and reads the record
    limit of each."""
    changelogs = changelog_topics(app)
    used = {short for role in roles for short in USES[role]}
    await ensure_topics(settings, changelogs, only=used)
    names = [settings.topic(spec.name) for spec in TOPICS if spec.short in used]
    return await read_limits(settings, [*names, *(topic.name for topic in changelogs)])


def fit_batches_to_limits(app: faust.App, limits: RecordLimits) -> None:
    """A topic limit below the producer's batch size (16 KiB) would have the broker refuse a
    batch of records that each fit: batches are kept at most that small."""
    smallest = min([limit.max_bytes for limit in limits.by_topic.values()], default=limits.fallback.max_bytes)
    if smallest < PRODUCER_MAX_BATCH_BYTES:
        app.conf.producer_max_batch_size = smallest


def load_models(stage: Stage, loop: asyncio.AbstractEventLoop) -> None:
    """Loads every model of the process on the loop faust will run on (an in-process engine
    binds to it), before faust starts: no consumer has joined a group yet, so nothing is fetched
    or committed while weights load (in threads), and a model that cannot load raises
    ModelLoadError with every input left for the next worker. Meanwhile /readyz answers
    "loading model X" and /healthz "ok". The models already loaded are closed before the error
    goes up (a vLLM engine has processes of its own)."""
    # Until faust installs its own handlers, SIGINT/SIGTERM end the start-up cleanly: nothing has
    # been fetched yet (loading reads karma.checkpoints first, so this window is not instant).
    previous = {
        signum: signal.signal(signum, _stop_during_start_up) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        loop.run_until_complete(stage.load_models())
    except BaseException:
        loop.run_until_complete(stage.close_backends())
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_during_start_up(signum: int, frame: object) -> None:
    log.warning("%s while loading models: stopping before anything was consumed", signal.Signals(signum).name)
    raise SystemExit(0)


def run_worker(
    settings: KarmaSettings,
    roles: tuple[str, ...] = ROLES,
    models: list[ModelSpec] | None = None,
    loglevel: str = "warning",
) -> None:
    """Checks the connection, creates the topics (changelogs included), serves /metrics, /healthz
    and /readyz, and runs the agents until SIGINT/SIGTERM.

    Installed faust-streaming or aiokafka releases other than those its overrides were written
    against raise UntestedVersionError (streams/versions.py) before anything else. A cluster
    that cannot be reached, or refuses the TLS or SASL settings, raises ClusterAccessError (a
    KafkaError), within seconds and before faust or anything else starts, so that the command
    can say why in one line (`karma worker` exits with code 2 for both). A model that cannot
    load raises ModelLoadError, before faust starts (`karma worker` exits with code 3)."""
    check_versions(settings.allow_untested_versions)
    asyncio.run(check_connection(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stage = create_stage(settings, roles, models)
    app = stage.app
    stage.delivery.limits = asyncio.run(prepare_topics(settings, app, roles))
    fit_batches_to_limits(app, stage.delivery.limits)
    serve_metrics(
        settings.metrics_port,
        settings.metrics_host,
        checks={"/healthz": stage.health.live, "/readyz": stage.health.ready},
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    load_models(stage, loop)
    # The faust Worker owns the event loop from here; its SIGINT/SIGTERM handlers stop the agents
    # and commit offsets before exiting (KarmaWorker bounds how long that may take).
    worker = KarmaWorker(
        stage,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )
    # faust's terminal spinner sets the root logger to DEBUG, so every library debug line would be
    # built and dropped: ~300,000 records per 10,000 responses rated, 12% of the rating stage's time.
    worker.spinner = None
    worker.execute_from_commandline()
