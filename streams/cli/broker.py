"""`karma broker`: start, stop, status and reset of the local development broker
(streams/broker.py LocalBroker)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from karma.streams.broker import BrokerConfig, BrokerError, LocalBroker

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


def _broker(port: int, home: Path | None) -> LocalBroker:
    return LocalBroker(BrokerConfig(port=port) if home is None else BrokerConfig(home, port))


def _fail(exc: BrokerError) -> typer.Exit:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(2)


@broker_app.command()
def start(
    port: PortOption = 9092,
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 90,
) -> None:
    """Start the broker in the background (resolves its jars with Maven on first use)."""
    broker = _broker(port, home)
    state = broker.status()
    if state.running and state.answering:
        _out.print(f"broker already up on {broker.bootstrap} (pid {state.pid})")
        return
    try:
        with _out.status(f"starting Kafka {broker.config.kafka_version} on {broker.bootstrap}…"):
            broker.start(timeout=timeout, progress=lambda msg: _out.print(f"[cyan]{escape(msg)}[/]"))
    except BrokerError as exc:
        raise _fail(exc) from None
    pid = broker.status().pid
    _out.print(f"[green]broker up on {broker.bootstrap}[/] (pid {pid}, log {broker.log_file})")


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
        _out.print(f"[green]running[/] on {state.bootstrap} (pid {state.pid}), answering metadata")
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
