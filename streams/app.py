"""The faust app: one per worker process, carrying the agents of the roles it runs (their
common machinery, `Stage`, is streams/stage.py).

The app id is the consumer group and the stem of changelog topics, so it follows the role:
`karma worker generate --model M` is group `<app_id>-generate-M` (one group per model, so
every model sees every prompt; more workers with the same --model share its partitions),
`karma worker rate` is `<app_id>-rate`, `karma worker judge` is `<app_id>-judge`, and
`karma run` (all roles in one process, for laptops and CI) is `<app_id>`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka.admin import NewTopic
from faust.auth import SASLCredentials, SSLCredentials
from faust.sensors import Monitor
from faust.types.auth import CredentialsT
from mode.utils.times import want_seconds

from karma.streams import transport
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.delivery import ConfirmedTable
from karma.streams.health import Health
from karma.streams.kafka_clients import ssl_context
from karma.streams.lag import LagMonitor
from karma.streams.metrics import LOOP_LAG
from karma.streams.recovery import SeekSafeTableManager
from karma.streams.sizes import PRODUCER_MAX_BATCH_BYTES, PRODUCER_MAX_REQUEST_BYTES
from karma.streams.stage import Stage, raw_topic
from karma.streams.topics import TOPICS, TopicNames

# The roles a worker can run, and the topics (short names, streams/topics.py) each one reads,
# for the lag gauge; streams/worker.py registers each role's agents.
CONSUMES: dict[str, tuple[str, ...]] = {
    "generate": ("prompts",),
    "rate": ("responses", "ticks", "preferences"),
    "judge": ("pairs",),
}
# ... and the topics each one writes (and the generation its follower reads): with one
# principal per role, a worker creates and checks only these (streams/acls.py grants them).
USES: dict[str, tuple[str, ...]] = {
    "generate": (*CONSUMES["generate"], "checkpoints", "responses", "dlq"),
    "rate": (*CONSUMES["rate"], "pairs", "dlq"),
    "judge": (*CONSUMES["judge"], "preferences", "dlq"),
}
ROLES = tuple(CONSUMES)
log = logging.getLogger(__name__)


class PerMessageQuietMonitor(Monitor):
    """faust's monitor without its per-message bookkeeping (in-memory stats for faust's web
    views, which these workers do not serve): every message, send and table access would
    otherwise update it. The workers export their own Prometheus metrics instead."""

    def on_message_in(self, *args: Any) -> None:
        return None

    def on_stream_event_in(self, *args: Any) -> None:
        return None

    def on_stream_event_out(self, *args: Any) -> None:
        return None

    def on_message_out(self, *args: Any) -> None:
        return None

    def on_table_get(self, *args: Any) -> None:
        return None

    def on_table_set(self, *args: Any) -> None:
        return None

    def on_table_del(self, *args: Any) -> None:
        return None

    def on_send_initiated(self, *args: Any, **kwargs: Any) -> None:
        return None

    def on_send_completed(self, *args: Any) -> None:
        return None


def app_id_for(settings: KarmaSettings, roles: Iterable[str], models: Iterable[str] = ()) -> str:
    """The consumer group: one per role, and one per model (or model set) for generation."""
    roles = tuple(roles)
    if set(roles) == set(ROLES):
        return settings.app_id
    parts = [settings.app_id, *roles, *sorted(models)]
    # The id also names internal topics, which allow only [a-zA-Z0-9._-].
    return re.sub(r"[^a-zA-Z0-9._-]", "_", "-".join(parts))


def faust_credentials(settings: KarmaSettings) -> CredentialsT | None:
    """faust's `broker_credentials` for these settings (None: PLAINTEXT). faust's aiokafka driver
    turns them into the same keyword arguments as `client_options` (streams/kafka_clients.py;
    faust's credentials_to_aiokafka_auth): SASLCredentials carry the mechanism (SCRAM included)
    and, for SASL_SSL, the TLS context; SSLCredentials the context alone."""
    security = settings.kafka_security
    context = ssl_context(security)
    if security.uses_sasl:
        return SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            ssl_context=context,  # None: SASL_PLAINTEXT
            mechanism=security.sasl_mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def changelog_topics(app: faust.App) -> list[NewTopic]:
    """The changelog topics of the app's tables, configured as faust declares them, for
    `ensure_topics` (streams/topics.py) to create before the worker starts."""
    topics = []
    for table in app.tables.values():
        changelog = table.changelog_topic
        config: dict[str, str] = {}
        flags = (("compact", changelog.compacting), ("delete", changelog.deleting))
        policies = sorted(policy for policy, on in flags if on)
        if policies:
            config["cleanup.policy"] = ",".join(policies)
        if changelog.retention:
            config["retention.ms"] = str(int(want_seconds(changelog.retention) * 1000))
        config.update({key: str(value) for key, value in (changelog.config or {}).items()})
        topics.append(
            NewTopic(
                changelog.get_topic_name(),
                changelog.partitions or app.conf.topic_partitions,
                changelog.replicas or app.conf.topic_replication_factor,
                topic_configs=config,
            )
        )
    return topics


def new_stage(
    settings: KarmaSettings,
    roles: Iterable[str] = ROLES,
    models: list[ModelSpec] | None = None,
) -> Stage:
    """A faust app for `roles`, with its topics and the lag and loop-lag watchers, and no agents
    yet: `streams/worker.py` registers the stages' agents on it. `models` narrows generation to
    part of the pool (it names the consumer group)."""
    roles = tuple(roles)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {list(ROLES)}")
    chosen_models = [m.name for m in models] if models and roles == ("generate",) else []
    app = faust.App(
        app_id_for(settings, roles, chosen_models),
        broker=[f"{transport.SCHEME}://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(settings),  # TLS and SASL, as every other client
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_commit_interval=1.0,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=16384,
        producer_linger_ms=5,
        # A rebalance waits for the batch in hand (`Stage.batches_done`, streams/transport.py), not
        # for every event faust has handed the agents: those queued are handed back (`Stage.batches`).
        stream_wait_empty=False,
        # The producer retries a retriable write this long (streams/delivery.py); its own record cap is
        # the one streams/sizes.py measures against.
        producer_request_timeout=settings.delivery_timeout_s,
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        Table=ConfirmedTable,  # changelog writes are confirmed with the outputs (streams/delivery.py)
        web_enabled=False,
        autodiscover=False,
        TableManager=SeekSafeTableManager,  # see streams/recovery.py
        monitor=PerMessageQuietMonitor(),
    )
    names = TopicNames.from_settings(settings)
    topics = {
        spec.short: raw_topic(app, getattr(names, spec.short), partitions=settings.partitions)
        for spec in TOPICS
    }
    stage = Stage(settings=settings, app=app, names=names, topics=topics)
    _watch_loop_lag(app, stage.health)
    _track_health(stage)
    if settings.lag_interval_s:
        consumed = {name for role in roles for name in CONSUMES[role]}
        if not settings.competency.online:
            consumed.discard("preferences")  # only the online competency reads the verdicts
        _report_lag(app, settings, [getattr(names, name) for name in sorted(consumed)])
    return stage


def _watch_loop_lag(app: faust.App, health: Health, interval_s: float = 0.05) -> None:
    @app.task
    async def watch_loop_lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval_s)
            LOOP_LAG.observe(max(0.0, loop.time() - started - interval_s))
            health.beat()  # the loop ran this tick: /healthz says alive


def _track_health(stage: Stage) -> None:
    """Keeps `stage.health` up to date from faust's signals, and closes the stage's backends
    when the app stops: faust sends `on_before_shutdown` once its consumer has stopped, after the
    batches in flight were handled and committed (streams/worker.py `KarmaWorker`), and before
    the producer's last flush."""
    app, health = stage.app, stage.health

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        health.mark_revoked()

    @app.on_partitions_assigned.connect
    async def assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        health.mark_assigned(assigned)

    # Sent when tables are recovered, just before the assignment's streams resume.
    @app.on_rebalance_complete.connect
    async def rebalanced(sender: Any, **kwargs: Any) -> None:
        health.mark_consuming()

    @app.on_before_shutdown.connect
    async def shutting_down(sender: Any, **kwargs: Any) -> None:
        health.mark_stopping()
        await stage.close_backends()


def _report_lag(app: faust.App, settings: KarmaSettings, topics: list[str]) -> None:
    @app.task
    async def report_lag() -> None:
        monitor = LagMonitor(settings, app.conf.id, topics)
        await monitor.run(settings.lag_interval_s)
