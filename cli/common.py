"""What the commands share: the two consoles, the --config/--bootstrap options, the progress bar,
and the two wrappers that turn a bad config or an unreachable broker into a one-line error
(`kafka_problem` words a Kafka error for every command, workers included)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from karma.streams.client import TopicNotFoundError
from karma.streams.config import ConfigError, KafkaSecurity, KarmaSettings, PrincipalRole, load_settings
from karma.streams.kafka_clients import AUTHORIZATION_ERRORS, ClusterAccessError

T = TypeVar("T")

# soft_wrap: messages stay whole lines in log files and pipes, where rich would wrap at 80.
console = Console(stderr=True, soft_wrap=True)
out = Console()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (see README); KARMA_* variables override it."),
]
BootstrapOption = Annotated[
    str | None, typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers, e.g. 127.0.0.1:9092.")
]


def settings_or_exit(
    config: Path | None, role: PrincipalRole | None = None, **overrides: Any
) -> KarmaSettings:
    """Loads settings, turning a bad file or value into a one-line message and exit code 2; with
    `role`, the command connects with that role's credentials (`kafka_principals`)."""
    try:
        settings = load_settings(config, **overrides)
        return settings if role is None else settings.as_role(role)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            console.print(f"[red]error:[/] {escape(line)}")
    raise typer.Exit(2)


def principal_of(security: KafkaSecurity) -> str:
    """The principal these settings connect as, as the broker names it (for error messages)."""
    if security.uses_sasl and security.sasl_username:
        return f"User:{security.sasl_username}"
    if security.ssl_certfile:
        return f"the principal of certificate {security.ssl_certfile}"
    return "User:ANONYMOUS"


def kafka_problem(exc: KafkaError, settings: KarmaSettings | None = None, attempted: str = "") -> str:
    """A Kafka error as the one line after `error:`. The client factory (streams/kafka_clients.py)
    has already named the cause of a failed connection (refused, TLS, SASL) and the setting to
    check; an authorization error says what was refused to which principal; any other Kafka
    error gets aiokafka's words and the first thing to look at."""
    if isinstance(exc, ClusterAccessError):
        return str(exc)
    if isinstance(exc, AUTHORIZATION_ERRORS) and settings is not None:
        who = principal_of(settings.kafka_security)
        return (
            f"not authorized: the broker refused {attempted or 'the request'} to {who} "
            f"({type(exc).__name__}); `karma acl` lists what each role may do"
        )
    return f"Kafka: {exc} (is the broker up? try `karma broker status`)"


def run_or_exit(
    coro: Coroutine[Any, Any, T], settings: KarmaSettings | None = None, attempted: str = ""
) -> T:
    """Runs a coroutine; an unreachable broker, refused credentials, a refused authorization
    (`attempted` says what was tried, e.g. "READ on topic karma.prompts") or a missing topic is
    a one-line error, exit code 1."""
    try:
        return asyncio.run(coro)
    except TopicNotFoundError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
    except KafkaError as exc:
        console.print(f"[red]error:[/] {escape(kafka_problem(exc, settings, attempted))}")
    raise typer.Exit(1)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, on the running loop: a long command stops cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def new_progress() -> Progress:
    """A progress bar on stderr (`console`); also handed to `run_demo` and `run_eval`."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
