"""`karma demo`: the whole pipeline end to end on this machine, with a summary of what came out."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from karma.cli.common import (
    BootstrapOption,
    ConfigOption,
    console,
    new_progress,
    out,
    settings_or_exit,
)
from karma.cli.local_broker import broker_or_exit
from karma.streams.topics import TopicMismatchError
from karma.tools.demo import run_demo

_COUNTS = ("prompts", "responses", "pairs", "preferences", "ties", "dlq")


def demo(
    prompts: Annotated[
        Path | None, typer.Option(help="JSONL prompts to submit (default: the bundled 50).")
    ] = None,
    output: Annotated[Path, typer.Option("--out", help="Where to write the preferences.")] = Path(
        "karma-out/preferences.jsonl"
    ),
    port: Annotated[int, typer.Option(help="Port of the local broker (without --bootstrap).")] = 9092,
    bootstrap: BootstrapOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the preferences.")] = 240.0,
    keep_broker: Annotated[bool, typer.Option(help="Leave the broker running afterwards.")] = False,
    config: ConfigOption = None,
) -> None:
    """End to end on this machine: broker up, workers up, prompts in, preferences out, summary.

    Without --bootstrap it starts the local broker on --port if none answers there (and stops it
    afterwards unless --keep-broker)."""
    with broker_or_exit(bootstrap, port, TopicMismatchError, keep=keep_broker) as servers:
        console.print(f"broker: {servers}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        settings = settings_or_exit(
            config,
            bootstrap_servers=servers,
            topic_prefix=f"demo-{stamp}.",
            app_id=f"karma-demo-{stamp}",
            metrics_port=0,
        )
        # Prior competency, so the demo can predict (and check) every pair; `karma eval` and
        # the drift test show the online competency.
        settings = settings.model_copy(
            update={"competency": settings.competency.model_copy(update={"online": False})}
        )
        prompt_lines = (
            prompts.read_text()
            if prompts
            else resources.files("karma.tools").joinpath("data/sample_prompts.jsonl").read_text()
        ).splitlines()
        summary = run_demo(settings, prompt_lines, output, timeout, console, new_progress)
    table = Table(title="KARMA demo")
    for column in _COUNTS:
        table.add_column(column, justify="right")
    table.add_row(*(str(summary[c]) for c in _COUNTS))
    out.print(table)
    kind = (
        "simulated responses: not training data"
        if summary["simulated"]
        else "real models' responses, labelled by the judge"
    )
    out.print(f"preferences written to {output} ({kind})")
    if summary["missing"]:
        console.print(f"[red]{summary['missing']} expected preference(s) did not arrive in {timeout:g} s[/]")
        raise typer.Exit(1)
