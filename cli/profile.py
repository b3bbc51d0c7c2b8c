"""`karma profile`: competency profiles for the kin rule, measured on a benchmark set through the
pool's own backends, or read from lm-evaluation-harness result files (the work is in
tools/profile/; this module is its options, its progress bar and its tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from karma.cli.common import ConfigOption, console, new_progress, out, run_or_exit, settings_or_exit
from karma.streams.config import KarmaSettings
from karma.tools.profile import (
    BackendBuildError,
    BenchmarkError,
    LmEvalError,
    Measured,
    ModelTally,
    ProfileTable,
    ScoringError,
    TableError,
    measure_pool,
    merge_runs,
    read_benchmark,
    read_run,
    results_files,
    write_table,
)

DEFAULT_OUT = Path("karma-out/profiles.csv")


def profile(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="The benchmark JSONL; with --from-lm-eval, lm-eval result files or folders of them.",
            show_default=False,
        ),
    ],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The profile CSV (model x skill, accuracy in [0, 1]) for `karma kin --profiles` and "
            "kin.profiles; the prompts behind each cell go to its sibling <stem>.counts.csv.",
        ),
    ] = DEFAULT_OUT,
    scorer: Annotated[
        str,
        typer.Option(
            help="Scorer for prompts whose metadata names none: exact, numeric, contains or module:function."
        ),
    ] = "exact",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Prompts per backend call (default: the config's batch_size).")
    ] = None,
    from_lm_eval: Annotated[
        bool,
        typer.Option(
            "--from-lm-eval",
            help="Read lm-evaluation-harness results_*.json instead of running the pool: a column a task.",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="--from-lm-eval: the model every file given is of (default: each file's model_name or "
            "config.model_args, a pool model's checkpoint read as its pool name)."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="--from-lm-eval: the metric per task, e.g. acc or exact_match,strict-match "
            "(default: acc_norm if present, else acc, else the task's first numeric metric)."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Measure every model of the pool on a benchmark set: the profile table `karma kin` reads.

    Each prompt of the JSONL (the form `karma submit` reads) carries in its
    metadata `reference` (the answer), `skill` (its column) and optionally
    `scorer`. Every model of the configured pool answers every prompt through
    its own backend, in batches, no Kafka involved; its accuracy per skill is
    the mean score of its answers, a request its backend failed on counting as
    wrong (and reported). The table goes to --out (CSV, model x skill, accuracy
    in [0, 1]), the number of prompts per cell to <stem>.counts.csv beside it.
    With --from-lm-eval the scores come from lm-evaluation-harness result files
    instead.
    """
    settings = settings_or_exit(config)
    try:
        if from_lm_eval:
            table = _from_lm_eval(inputs, model, metric, settings)
            failures: dict[str, ModelTally] = {}
        else:
            if model is not None or metric is not None:
                _fail("--model and --metric go with --from-lm-eval; a measurement runs every pool model")
            if len(inputs) != 1:
                _fail(f"one benchmark JSONL, got {len(inputs)} paths (lm-eval files need --from-lm-eval)")
            measured = _measure(inputs[0], scorer, batch_size, settings)
            table = measured.table()
            failures = {t.model: t for t in measured.tallies if t.failed}
        written, counts = write_table(table, out_path)
    except (BenchmarkError, LmEvalError, TableError, ScoringError) as exc:
        _fail(str(exc))
    out.print(_accuracy_table(table))
    for name, tally in failures.items():
        kinds = ", ".join(f"{n} {kind}" for kind, n in tally.failures.most_common())
        first = next(iter(tally.first_failure.values()))
        console.print(
            f"[yellow]warning:[/] {escape(name)}: {tally.failed} prompt(s) failed ({escape(kinds)}), "
            f"counted as wrong; first: {escape(first)}"
        )
    out.print(f"wrote {escape(str(written))} and {escape(str(counts))}", soft_wrap=True)


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def _measure(benchmark: Path, scorer: str, batch_size: int | None, settings: KarmaSettings) -> Measured:
    items = read_benchmark(benchmark, default_scorer=scorer)
    with new_progress() as progress:
        # Started when its model's turn comes, so each shows its own time, loading included.
        tasks = {
            spec.name: progress.add_task(spec.name, total=len(items), start=False) for spec in settings.pool
        }

        def advance(model: str, done: int) -> None:
            progress.start_task(tasks[model])
            progress.update(tasks[model], completed=done)

        try:
            return run_or_exit(measure_pool(settings, items, batch_size, advance))
        except BackendBuildError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None


def _from_lm_eval(
    paths: list[Path], model: str | None, metric: str | None, settings: KarmaSettings
) -> ProfileTable:
    runs = [read_run(path, metric) for path in results_files(paths)]
    # A file names the checkpoint it evaluated; the pool knows that checkpoint by its own name.
    rename = {spec.served_model: spec.name for spec in settings.pool if spec.served_model != spec.name}
    merged = merge_runs(runs, model=model, rename=rename)
    for run in runs:
        for task, why in run.left_out.items():
            console.print(f"{escape(str(run.path))}: {escape(task)} left out: {escape(why)}")
    for line in merged.superseded:
        console.print(f"superseded: {escape(line)}")
    used = sorted({key for row in merged.metrics.values() for key in row.values()})
    console.print(f"metrics used: {escape(', '.join(used))}")
    return merged.table


def _accuracy_table(table: ProfileTable) -> Table:
    shown = Table(title=f"profile ({len(table.scores)} models x {len(table.columns)} columns)")
    shown.add_column("model", no_wrap=True)
    # A column whose cells all rest on the same number of prompts says it once, in its header.
    shared: dict[str, int | None] = {}
    for column in table.columns:
        ns = {table.counts.get(m, {}).get(column) for m, row in table.scores.items() if column in row}
        shared[column] = ns.pop() if len(ns) == 1 else None
        shown.add_column(
            column if shared[column] is None else f"{column}\nn={shared[column]}", justify="right"
        )
    for name, row in table.scores.items():
        counts = table.counts.get(name, {})
        cells = []
        for column in table.columns:
            if column not in row:
                cells.append("-")
            elif shared[column] is None and column in counts:
                cells.append(f"{row[column]:.3f} (n={counts[column]})")
            else:
                cells.append(f"{row[column]:.3f}")
        shown.add_row(name, *cells)
    return shown
