"""The `karma` command line: the typer app, its global options, and the table of its commands.

Each command lives in the module of its group (workers, records, tail, kin, backends, demo, evaluate,
export, train, loop, schemas, simulated_server, broker, lab); what they share is in common.py. Every
command is documented by `karma COMMAND --help`.

The commands are registered by name (`COMMANDS`, cli/lazy.py): `karma --help` lists them without
importing their modules, and `karma COMMAND` imports that command's module only, so the command
line starts without faust, the stages or the model backends unless the command needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from karma.cli.lazy import LazyCommand, LazyGroup
from karma.cli.logging_setup import DEFAULT_LOG_FILE, LogLevel, set_up_logging

__all__ = ["COMMANDS", "app", "main"]

# In this order in `karma --help`. The help is the first paragraph of the command's docstring (the
# sub-app's help for broker), here so that listing needs no import; tests/cli/test_lazy.py checks it.
COMMANDS: tuple[LazyCommand, ...] = (
    LazyCommand(
        "worker", "karma.cli.workers:worker", "Run one stage as a faust worker until SIGINT/SIGTERM."
    ),
    LazyCommand(
        "run",
        "karma.cli.workers:run",
        "Run all stages (generate, rate, judge) in one process: for a laptop, a demo or CI.",
    ),
    LazyCommand("submit", "karma.cli.records:submit", "Publish prompts from a JSONL file to karma.prompts."),
    LazyCommand(
        "kin",
        "karma.cli.kin:kin",
        "Superiority of every model and, for every pair of models, similarity, gap and kinship.",
    ),
    LazyCommand(
        "profile",
        "karma.cli.profile:profile",
        "Measure every model of the pool on a benchmark set: the profile table `karma kin` reads.",
    ),
    LazyCommand(
        "competency",
        "karma.cli.kin:competency",
        "The live pool: prior, online and blended superiority, comparisons in the window, kin now.",
    ),
    LazyCommand(
        "audit",
        "karma.cli.records:audit",
        "The ledger of every prompt: did each end as its preferences, or as dead letters naming it?",
    ),
    LazyCommand(
        "generate",
        "karma.cli.backends:generate",
        "Generate one response with a backend, outside the pipeline: to check a model or server.",
    ),
    LazyCommand(
        "judge",
        "karma.cli.backends:judge",
        "Judge answer A against answer B in both orders, and print the resolved verdict with both "
        "orders' raw verdicts (an order-dependent verdict is a tie).",
    ),
    LazyCommand(
        "tail",
        "karma.cli.tail:tail",
        "Print a topic's messages as JSON lines, decoded (reads without joining a group).",
    ),
    LazyCommand(
        "demo",
        "karma.cli.demo:demo",
        "End to end on this machine: broker up, workers up, prompts in, preferences out, summary.",
    ),
    LazyCommand(
        "eval",
        "karma.cli.evaluate:evaluate",
        "Compare pairing policies: the pipeline once per policy over one prompt set, then a report.",
    ),
    LazyCommand(
        "export",
        "karma.cli.export:export",
        "Export the preferences as TRL-ready shards (DPO: prompt, chosen, rejected), exactly once.",
    ),
    LazyCommand(
        "train",
        "karma.cli.train:train",
        "Continual DPO for one model of the pool: rounds of preferences, each a new checkpoint version "
        "that the generation workers switch to.",
    ),
    LazyCommand(
        "loop",
        "karma.cli.loop:loop",
        "Turn the continual-alignment loop on the lab: generate, rate, judge, train, reload, k times.",
    ),
    LazyCommand(
        "simulated-server",
        "karma.cli.simulated_server:simulated_server",
        "Serve the SIMULATED models as an OpenAI-compatible chat-completions API, for tests.",
    ),
    LazyCommand(
        "schemas",
        "karma.cli.schemas:schemas",
        "The record types on the karma topics: schema ids, versions, .avsc, and the byte framing.",
    ),
    LazyCommand(
        "acl",
        "karma.cli.acl:acl",
        "The least Kafka ACLs of each role (producer, generation, rating, judging, trainer, operator); "
        "--apply creates them.",
    ),
    LazyCommand(
        "broker",
        "karma.cli.broker:broker_app",
        "Run a real Apache Kafka broker (KRaft) on 127.0.0.1 for development, or a cluster of "
        "several (--nodes 3) to try losing one.",
    ),
    LazyCommand(
        "lab",
        "karma.cli.lab:lab_app",
        "Train a pool of small causal LMs from scratch on the CPU, on skills whose answers a program "
        "checks, of different competency in level and in shape.",
    ),
)


class _Commands(LazyGroup):
    table = COMMANDS


app = typer.Typer(
    cls=_Commands,
    help="KARMA-stream: kin-matched preference pairs for continual LLM alignment, through Kafka.",
    no_args_is_help=True,
    add_completion=False,
)


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
