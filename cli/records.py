"""The commands that read or write the pipeline's topics from outside a worker: `karma submit`
(prompts in) and `karma audit` (the ledger of every prompt). `karma tail` is cli/tail.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from karma.agents.kinship import ProfileError
from karma.cli.common import (
    BootstrapOption,
    ConfigOption,
    console,
    new_progress,
    out,
    run_or_exit,
    settings_or_exit,
)
from karma.streams.client import PromptProducer, parse_prompt_file
from karma.streams.codecs import encode
from karma.streams.config import KarmaSettings
from karma.streams.sizes import read_limits, record_size
from karma.tools.audit import Ledger, State
from karma.tools.audit import audit as audit_topics


def submit(
    file: Annotated[Path, typer.Argument(help='JSONL: one {"text": ...} object per line.')],
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    source: Annotated[str, typer.Option(help="Recorded as each prompt's source.")] = "karma-submit",
) -> None:
    """Publish prompts from a JSONL file to karma.prompts.

    Each line is an object with "text" (or "prompt"), and optionally "prompt_id" and "metadata"
    (string values). Without prompt_id, the id is a hash of source and text, so submitting a file
    twice does not create new prompts. A bad line is reported with its line number and skipped.
    """
    settings = settings_or_exit(config, "producer", bootstrap_servers=bootstrap)
    if not file.is_file():
        console.print(f"[red]error:[/] {file} is not a readable file")
        raise typer.Exit(2)
    sent, skipped = run_or_exit(
        _submit(settings, file, source), settings, f"WRITE on topic {settings.topic('prompts')}"
    )
    console.print(f"submitted {sent} prompt(s) to {settings.topic('prompts')}; skipped {skipped} bad line(s)")


async def _submit(settings: KarmaSettings, file: Path, source: str) -> tuple[int, int]:
    """Sends every good line and waits for the broker's acknowledgement of each; a bad line, one
    too large for the prompts topic, and one the broker refuses are reported and skipped. A prompt
    counts as submitted only once acknowledged."""
    lines = file.read_text().splitlines()
    topic = settings.topic("prompts")
    limit = (await read_limits(settings, [topic])).of(topic)
    skipped = 0
    async with PromptProducer(settings, source=source) as producer:
        with new_progress() as progress:
            task = progress.add_task("submitting", total=len(lines))
            pending = []
            for line_no, prompt, error in parse_prompt_file(lines, source):
                if prompt is not None and error is None:
                    size = record_size(prompt.prompt_id.encode(), encode(prompt))
                    if size > limit.max_bytes:
                        error = f"the prompt's record is {size:,} bytes; {limit.describe(topic)}"
                if error is not None:
                    console.print(f"[yellow]skipped[/] {file}:{line_no}: {escape(error)}")
                    skipped += 1
                elif prompt is not None:
                    pending.append((line_no, await producer.send_prompt(prompt)))
                progress.advance(task)
            results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    refused = [
        (line_no, result)
        for (line_no, _), result in zip(pending, results, strict=True)
        if isinstance(result, BaseException)
    ]
    for line_no, error in refused:
        console.print(f"[yellow]skipped[/] {file}:{line_no}: the broker refused it: {escape(repr(error))}")
    return len(pending) - len(refused), skipped + len(refused)


def audit(
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of tables.")] = False,
    backstop_s: Annotated[
        float | None,
        typer.Option(
            "--backstop-s",
            min=0.0,
            help="Seconds after its last prompt, response or pair message that a prompt must have "
            "settled; later it is unaccounted (default: gather_timeout_s).",
        ),
    ] = None,
    show: Annotated[
        int, typer.Option("--show", min=0, help="List up to N prompts that are not complete, with reasons.")
    ] = 20,
) -> None:
    """The ledger of every prompt: did each end as its preferences, or as dead letters naming it?

    Reads prompts, responses, pairs, preferences and the DLQ to their end (no consumer group) and
    counts each submitted prompt as complete, complete-late, partial, dead-lettered, pending or
    unaccounted (not settled, and older than the backstop). With competency.online false the
    pairs the policy must pick are recomputed and checked too; with it on, the emitted ones only.
    Exit code 1 when anything is unaccounted."""
    settings = settings_or_exit(config, "operator", bootstrap_servers=bootstrap)
    try:
        reading = f"READ on topics {settings.topic_prefix}*"
        ledger = run_or_exit(audit_topics(settings, backstop_s=backstop_s), settings, reading)
    except ProfileError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        print(ledger.to_json(show))
    else:
        _print_ledger(ledger, show)
    if ledger.unaccounted:
        raise typer.Exit(1)


def _print_ledger(ledger: Ledger, show: int) -> None:
    """`karma audit`'s text output: the counts, then up to `show` prompts that are not complete."""

    def parts(counts: dict[str, int]) -> str:
        return ", ".join(f"{name} {n}" for name, n in counts.items() if n) or "-"

    undecodable = {state.value: sum(u.state is state for u in ledger.undecodable) for state in State}
    table = Table(title=f"karma audit: {ledger.submitted} prompt(s)")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("detail")
    table.add_row("submitted", str(ledger.submitted), "distinct decoded prompts")
    for state in State:
        table.add_row(state.value, str(ledger.counts[state]), "")
    table.add_row("undecodable prompts", str(len(ledger.undecodable)), parts(undecodable))
    table.add_row("ids seen twice", str(sum(ledger.seen_twice.values())), parts(ledger.seen_twice))
    table.add_row("orphans", str(sum(ledger.orphans.values())), parts(ledger.orphans))
    out.print(table)
    checked = "every pair the policy picks" if ledger.pairs_checked == "expected" else "emitted pairs only"
    out.print(f"pairs checked: {checked}; backstop {ledger.backstop_ms / 1000:g} s")
    listed = ledger.prompts[:show]
    if listed:
        out.print(f"{len(listed)} of {len(ledger.prompts)} prompt(s) not complete:")
    for account in listed:
        out.print(
            f"{account.prompt_id}: {account.state.value}, {account.preferences} preference(s) "
            f"of {account.pairs} pair(s)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        for line in account.missing:
            out.print(f"  missing: {line}", markup=False, highlight=False, soft_wrap=True)
        for reason in account.reasons:
            out.print(f"  reason: {reason}", markup=False, highlight=False, soft_wrap=True)
    for message in [u for u in ledger.undecodable if u.state is not State.DEAD_LETTERED][:show]:
        out.print(
            f"undecodable prompt at partition {message.partition} offset {message.offset} "
            f"(key {message.prompt_id}): {message.state.value}, no dead letter: {message.error}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if ledger.unaccounted:
        out.print(f"[red]{ledger.unaccounted} unaccounted[/]: not settled within the backstop")
