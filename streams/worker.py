"""A worker: the stages of some roles on one faust app, run until SIGINT/SIGTERM. The body of
`karma worker` and `karma run`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import faust

from karma.agents import generation, judging, rating
from karma.streams.app import ROLES, new_stage
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.kafka_clients import check_connection
from karma.streams.metrics import serve_metrics
from karma.streams.topics import changelog_topics, ensure_topics


def create_app(
    settings: KarmaSettings,
    roles: Iterable[str] = ROLES,
    models: list[ModelSpec] | None = None,
) -> faust.App:
    """A faust app with the agents of `roles`; `models` narrows generation to part of the pool."""
    roles = tuple(roles)
    stage = new_stage(settings, roles, models)
    if "generate" in roles:
        generation.register(stage, models or settings.pool)
    if "rate" in roles:
        rating.register(stage)
    if "judge" in roles:
        judging.register(stage)
    return stage.app


def run_worker(
    settings: KarmaSettings,
    roles: tuple[str, ...] = ROLES,
    models: list[ModelSpec] | None = None,
    loglevel: str = "warning",
) -> None:
    """Checks the connection, creates the topics (changelogs included), serves /metrics, and runs
    the agents until SIGINT/SIGTERM.

    A cluster that cannot be reached, or refuses the TLS or SASL settings, raises
    ClusterAccessError (a KafkaError) first, within seconds and before faust or anything else
    starts, so that the command can say why in one line (`karma worker` exits with code 2)."""
    asyncio.run(check_connection(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, roles, models)
    asyncio.run(ensure_topics(settings, changelog_topics(app)))
    serve_metrics(settings.metrics_port, settings.metrics_host)
    # The faust Worker owns the event loop from here; it installs SIGINT/SIGTERM handlers
    # that stop the agents and commit offsets before exiting.
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # faust's terminal spinner sets the root logger to DEBUG, so every library debug line would be
    # built and dropped: ~300,000 records per 10,000 responses rated, 12% of the rating stage's time.
    worker.spinner = None
    worker.execute_from_commandline()
