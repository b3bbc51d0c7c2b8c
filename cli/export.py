"""`karma export`: the preferences topic as TRL-ready shards for training consumers (the work is
in tools/export/; this module is its options, its signals and its messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from karma.agents.policies import POLICIES
from karma.cli.common import (
    BootstrapOption,
    ConfigOption,
    console,
    new_progress,
    out,
    run_or_exit,
    settings_or_exit,
    stop_on_signals,
)
from karma.streams.config import KarmaSettings
from karma.tools.export import (
    ExportError,
    ExportOptions,
    ExportResult,
    Layout,
    RowFilter,
    ShardFormat,
    run_export,
)


def export(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder of the shards (created; resumed if it has some).")
    ],
    fmt: Annotated[
        ShardFormat, typer.Option("--format", case_sensitive=False, help="jsonl, or parquet (needs pyarrow).")
    ] = ShardFormat.JSONL,
    messages: Annotated[
        bool,
        typer.Option(
            "--messages", help="prompt/chosen/rejected as chat messages (TRL's conversational format)."
        ),
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep exporting new preferences until Ctrl-C / SIGTERM.")
    ] = False,
    min_confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Only preferences the judge is this confident of.")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help=f"Only pairs of this policy (repeatable): {', '.join(POLICIES)}."),
    ] = None,
    shard_rows: Annotated[int, typer.Option(min=1, help="Rows per shard.")] = 10_000,
    shard_seconds: Annotated[
        float,
        typer.Option(min=0.1, help="A shard is committed at the latest this long after its first message."),
    ] = 60.0,
    topic: Annotated[
        str,
        typer.Option(help="The topic: preferences, or another run's, e.g. demo-20261129-101010.preferences."),
    ] = "preferences",
    group: Annotated[
        str | None,
        typer.Option(help="Consumer group the progress is committed to (default: <app_id>-export)."),
    ] = None,
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
) -> None:
    """Export the preferences as TRL-ready shards (DPO: prompt, chosen, rejected), exactly once.

    Columns: prompt, chosen, rejected, soft_label (P(chosen is better), null without
    log-probabilities), gap, confidence, chosen_model, rejected_model, judge, policy, simulated,
    preference_id, pair_id, prompt_id. Ties are not exported (DPO needs a winner); they are
    counted, as are preferences the filters leave out and messages that do not decode.

    Without --follow it stops at the end the topic had when it started. Each shard and the
    offsets it covers are committed together (OUT/.manifests/): after a crash, a new run
    resumes where the last committed shard ended, so no preference is written twice or missed.
    """
    unknown = sorted(set(policy or ()) - set(POLICIES))
    if unknown:
        choices = ", ".join(POLICIES)
        console.print(f"[red]error:[/] --policy: unknown {', '.join(unknown)}; choose from {choices}")
        raise typer.Exit(2)
    settings = settings_or_exit(config, "trainer", bootstrap_servers=bootstrap)
    options = ExportOptions(
        out=out_dir,
        layout=Layout(fmt, messages, RowFilter(min_confidence, frozenset(policy or ()))),
        topic=topic,
        group=group,
        follow=follow,
        shard_rows=shard_rows,
        shard_seconds=shard_seconds,
    )
    try:
        result = run_or_exit(_export(settings, options))
    except ExportError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _summarise(result)


async def _export(settings: KarmaSettings, options: ExportOptions) -> ExportResult:
    # SIGTERM and Ctrl-C end a --follow run cleanly: the open shard is committed first.
    stop = stop_on_signals()

    def say(line: str) -> None:
        console.print(escape(line))

    return await run_export(settings, options, say=say, progress=new_progress, stop=stop)


def _summarise(result: ExportResult) -> None:
    def skipped(counts: dict[str, int]) -> str:
        parts = [f"{counts.get(k, 0)} {label}" for k, label in _SKIPPED if counts.get(k)]
        return f"; skipped {', '.join(parts)}" if parts else ""

    out.print(
        f"exported {result.rows} row(s) in {result.shards} shard(s) from {result.consumed} message(s) "
        f"of {result.topic}{skipped(result.skipped)}",
        highlight=False,
        soft_wrap=True,
    )
    if result.folder_rows != result.rows:
        out.print(
            f"{result.folder}: {result.folder_rows} row(s) in {result.folder_shards} shard(s) over every run"
            f"{skipped(result.folder_skipped)}",
            highlight=False,
            soft_wrap=True,
        )


_SKIPPED = (
    ("tie", "ties"),
    ("policy", "of other policies"),
    ("confidence", "below --min-confidence"),
    ("undecodable", "undecodable"),
)
