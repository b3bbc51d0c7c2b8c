"""`karma broker`: start, stop, status and reset of the local development broker
(streams/broker.py LocalBroker)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from karma.streams.broker import BrokerConfig, BrokerError, LocalBroker
from karma.streams.config import ENV_PREFIX, KAFKA_PASSWORD_VARIABLE

broker_app = typer.Typer(
    help="Run a real single-node Apache Kafka broker (KRaft) on 127.0.0.1 for development.",
    no_args_is_help=True,
)
_out = Console()
_err = Console(stderr=True, soft_wrap=True)

PortOption = Annotated[int, typer.Option("--port", "-p", help="Client port on 127.0.0.1.")]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="State and jar cache dir [default: $KARMA_HOME or .cache/karma]."),
]


def _broker(port: int, home: Path | None, secure: bool = False) -> LocalBroker:
    config = (
        BrokerConfig(port=port, secure=secure) if home is None else BrokerConfig(home, port, secure=secure)
    )
    return LocalBroker(config)


def _mode(secure: bool) -> str:
    return "SASL_SSL" if secure else "PLAINTEXT"


def client_settings_text(broker: LocalBroker) -> str:
    """What a client of a secure broker sets: the YAML of a --config file, or the same as KARMA_*
    variables, and in both cases the password variable, read from its file when exported (so the
    password itself is not printed)."""
    settings = broker.client_settings()
    variables = [f"{ENV_PREFIX}BOOTSTRAP_SERVERS={shlex.quote(settings['bootstrap_servers'])}"]
    section: dict[str, Any] = settings.get("kafka_security", {})
    variables += [
        f"{ENV_PREFIX}KAFKA_SECURITY__{key.upper()}={shlex.quote(str(value))}"
        for key, value in section.items()
    ]
    password = f'{KAFKA_PASSWORD_VARIABLE}="$(cat {shlex.quote(str(broker.password_file))})"'
    return "\n".join(
        [
            "client settings, in a config file (--config FILE or KARMA_CONFIG):",
            *(f"  {line}" for line in yaml.safe_dump(settings, sort_keys=False).splitlines()),
            "or as environment variables:",
            *(f"  export {line}" for line in variables),
            "and, either way, the password of the SCRAM user:",
            f"  export {password}",
        ]
    )


def _fail(exc: BrokerError) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(2)


@broker_app.command()
def start(
    port: PortOption = 9092,
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 90,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Listen with SASL_SSL instead of PLAINTEXT: TLS with a CA made under the broker's "
            "home (needs openssl), SCRAM-SHA-512 user 'karma' with a generated password; prints the "
            "client settings. Fixed when the storage is formatted (`reset` to change it).",
        ),
    ] = False,
) -> None:
    """Start the broker in the background (resolves its jars with Maven on first use)."""
    broker = _broker(port, home, secure)
    state = broker.status()
    if state.running and state.answering:
        if state.secure != secure:
            _err.print(
                f"[bold red]error:[/] the broker on {broker.bootstrap} already runs with "
                f"{_mode(state.secure)}; `karma broker stop --port {port}` first"
            )
            raise typer.Exit(2)
        mode = " with SASL_SSL" if secure else ""
        _out.print(f"broker already up on {broker.bootstrap}{mode} (pid {state.pid})")
    else:
        try:
            with _out.status(f"starting Kafka {broker.config.kafka_version} on {broker.bootstrap}…"):
                broker.start(timeout=timeout, progress=lambda msg: _out.print(f"[cyan]{escape(msg)}[/]"))
        except BrokerError as exc:
            raise _fail(exc) from None
        pid = broker.status().pid
        mode = " with SASL_SSL" if secure else ""
        _out.print(f"[green]broker up on {broker.bootstrap}{mode}[/] (pid {pid}, log {broker.log_file})")
    if secure:
        _out.print(client_settings_text(broker), markup=False, highlight=False, soft_wrap=True)


@broker_app.command()
def stop(port: PortOption = 9092, home: HomeOption = None) -> None:
    """Stop the broker (SIGTERM, then SIGKILL if it hangs)."""
    broker = _broker(port, home)
    try:
        stopped = broker.stop()
    except BrokerError as exc:
        raise _fail(exc) from None
    _out.print(f"broker on {broker.bootstrap} " + ("stopped" if stopped else "was not running"))


@broker_app.command()
def status(port: PortOption = 9092, home: HomeOption = None) -> None:
    """Show whether the broker runs and answers; exit code 0 only if both."""
    state = _broker(port, home).status()
    if state.running and state.answering:
        mode = " with SASL_SSL" if state.secure else ""
        _out.print(f"[green]running[/] on {state.bootstrap}{mode} (pid {state.pid}), answering metadata")
        return
    if state.running:
        _out.print(f"[yellow]running[/] (pid {state.pid}) but not answering on {state.bootstrap}")
    else:
        _out.print(f"[red]not running[/] on {state.bootstrap}")
    raise typer.Exit(1)


@broker_app.command()
def reset(port: PortOption = 9092, home: HomeOption = None) -> None:
    """Delete the stopped broker's data (topics, offsets); the jar cache stays."""
    broker = _broker(port, home)
    try:
        removed = broker.reset()
    except BrokerError as exc:
        raise _fail(exc) from None
    _out.print(f"{'removed' if removed else 'no data at'} {broker.data_dir}")
