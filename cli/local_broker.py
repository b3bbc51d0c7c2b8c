"""The broker of the commands that run whole pipelines on this machine (`karma demo`, `karma eval`,
`karma loop`): the one given, or a local one started for the run. Apart from cli/common.py, which
`karma tail` loads, so that the light commands never import the local Kafka or the tools."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from aiokafka.errors import KafkaError
from rich.markup import escape

from karma.cli.common import console
from karma.localkafka.broker import BrokerError
from karma.tools.processes import broker_for


@contextlib.contextmanager
def broker_or_exit(
    bootstrap: str | None, port: int, *errors: type[Exception], keep: bool = False
) -> Iterator[str]:
    """The bootstrap servers a command that runs whole pipelines uses: `bootstrap`, or a local
    broker on `port` (tools/processes.py `broker_for`). A broker that does not start, one of the
    command's own `errors`, or Kafka failing underneath is a one-line error, exit code 1."""
    try:
        with broker_for(bootstrap, port, keep=keep, say=console.print) as servers:
            yield servers
    except (BrokerError, *errors) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (KafkaError, TimeoutError) as exc:
        problem = str(exc) or "timed out"
        if "broker" not in problem:  # the client's own messages may say where to look already
            problem += f" (is the broker at {bootstrap or f'127.0.0.1:{port}'} up?)"
        console.print(f"[red]error:[/] Kafka: {escape(problem)}")
        raise typer.Exit(1) from None
