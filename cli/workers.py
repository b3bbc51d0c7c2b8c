"""`karma worker ROLE` and `karma run`: the pipeline's stages as a faust worker in this process."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from aiokafka.errors import KafkaError
from rich.markup import escape

from karma.agents.backends import ModelLoadError
from karma.cli.common import BootstrapOption, ConfigOption, console, kafka_problem, settings_or_exit
from karma.streams.acls import PRINCIPAL_OF_WORKER_ROLE
from karma.streams.app import ROLES
from karma.streams.metrics import MetricsPortInUse
from karma.streams.topics import TopicMismatchError
from karma.streams.versions import UntestedVersionError
from karma.streams.worker import run_worker

# A model that cannot load (a bad checkpoint, out of memory): not the configuration's syntax
# (2), so an operator can tell it apart.
EX_MODEL_LOAD = 3
ALL = "all"  # the role that runs every stage in one worker
# The choices of `karma worker`: the stages streams/app.py knows, and all of them at once.
Role = StrEnum("Role", {name: name for name in (*ROLES, ALL)})

MetricsPortOption = Annotated[int | None, typer.Option(help="Port of /metrics (0 disables).")]
FaustLogLevelOption = Annotated[str, typer.Option(help="faust log level.")]


def worker(
    role: Annotated[Role, typer.Argument(help=f"Stage to run: {', '.join(ROLES)}, or {ALL}.")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="generate only: model(s) of the pool to serve (default: all)."),
    ] = None,
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    metrics_port: MetricsPortOption = None,
    loglevel: FaustLogLevelOption = "warning",
) -> None:
    """Run one stage as a faust worker until SIGINT/SIGTERM."""
    # One stage connects as its role's principal; `karma run` (every stage) with kafka_security.
    principal = PRINCIPAL_OF_WORKER_ROLE.get(role.value)
    settings = settings_or_exit(config, principal, bootstrap_servers=bootstrap, metrics_port=metrics_port)
    models = None
    if model:
        if role != "generate":
            console.print("[red]error:[/] --model applies to the generate role only")
            raise typer.Exit(2)
        unknown = sorted(set(model) - set(settings.model_names))
        if unknown:
            console.print(f"[red]error:[/] --model {unknown} not in the pool {settings.model_names}")
            raise typer.Exit(2)
        models = [spec for spec in settings.pool if spec.name in model]
    roles = ROLES if role == ALL else (role.value,)
    console.print(
        f"karma worker {role.value}: broker {settings.bootstrap_servers}, topics {settings.topic_prefix}*, "
        f"metrics {'off' if not settings.metrics_port else f'http://{settings.metrics_host}:{settings.metrics_port}/metrics'}"
    )
    try:
        run_worker(settings, roles, models, loglevel=loglevel)
    except (MetricsPortInUse, TopicMismatchError, UntestedVersionError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except ModelLoadError as exc:  # before faust starts: nothing consumed, nothing committed
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EX_MODEL_LOAD) from None
    except KafkaError as exc:  # raised before faust starts: see run_worker
        console.print(
            f"[red]error:[/] {escape(kafka_problem(exc, settings, str(exc.args[0]) if exc.args else ''))}"
        )
        raise typer.Exit(2) from None


def run(
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    metrics_port: MetricsPortOption = None,
    loglevel: FaustLogLevelOption = "warning",
) -> None:
    """Run all stages (generate, rate, judge) in one process: for a laptop, a demo or CI."""
    worker(Role(ALL), None, config, bootstrap, metrics_port, loglevel)
