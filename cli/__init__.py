"""The `karma` command line: the typer app, its global options, and the table of its commands.

Each command lives in the module of its group (workers, records, kin, backends, demo, evaluate,
export, schemas, simulated_server, broker); what they share is in common.py. Every command is
documented by `karma COMMAND --help`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from karma.cli import backends, demo, evaluate, export, kin, records, simulated_server, workers
from karma.cli.broker import broker_app
from karma.cli.logging_setup import DEFAULT_LOG_FILE, LogLevel, set_up_logging
from karma.cli.schemas import schemas

__all__ = ["app", "main"]

app = typer.Typer(
    help="KARMA-stream: kin-matched preference pairs for continual LLM alignment, through Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(broker_app, name="broker")

# In this order in `karma --help` (typer lists sub-apps such as broker after the commands).
app.command()(workers.worker)
app.command()(workers.run)
app.command()(records.submit)
app.command()(kin.kin)
app.command()(kin.competency)
app.command()(records.audit)
app.command()(backends.generate)
app.command()(backends.judge)
app.command()(records.tail)
app.command()(demo.demo)
app.command("eval")(evaluate.evaluate)
app.command()(export.export)
app.command("simulated-server")(simulated_server.simulated_server)
app.command()(schemas)


@app.callback()
def _global_options(
    loglevel: Annotated[
        LogLevel | None,
        typer.Option(
            "--loglevel",
            case_sensitive=False,
            help="Also show library log lines (aiokafka, faust, ...) of this level and above on stderr. "
            "(`worker`/`run` have their own --loglevel, for the faust worker's log.)",
        ),
    ] = None,
    log_file: Annotated[
        Path,
        typer.Option(
            "--log-file",
            help="Where library log lines of WARNING and above go (created only when one is logged).",
        ),
    ] = DEFAULT_LOG_FILE,
) -> None:
    set_up_logging(loglevel.value if loglevel else None, log_file)


def main() -> None:
    app()
