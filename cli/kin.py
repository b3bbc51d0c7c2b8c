"""`karma kin` (kinship from the benchmark profiles alone) and `karma competency` (the live pool,
with the online superiority from the verdicts in the rating stage's window)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from karma.agents.competency import pool_table
from karma.agents.kinship import ProfileError, kin_report, load_profiles
from karma.cli.common import (
    BootstrapOption,
    ConfigOption,
    console,
    out,
    run_or_exit,
    settings_or_exit,
)
from karma.streams.client import window_verdicts


def kin(
    profiles: Annotated[
        Path | None,
        typer.Option("--profiles", help="Benchmark CSV or YAML (default: the bundled 16-model table)."),
    ] = None,
    tau: Annotated[float | None, typer.Option(help="Minimum similarity (default: the config's).")] = None,
    delta: Annotated[
        float | None, typer.Option(help="Maximum superiority gap (default: the config's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of tables.")] = False,
    config: ConfigOption = None,
) -> None:
    """Superiority of every model and, for every pair of models, similarity, gap and kinship."""
    settings = settings_or_exit(config)
    overrides = {name: value for name, value in (("tau", tau), ("delta", delta)) if value is not None}
    rule = settings.kin.model_copy(update=overrides).rule()
    try:
        loaded = load_profiles(profiles or settings.kin.profiles)
    except ProfileError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    report = kin_report(loaded, rule)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    ranking = Table(title=f"superiority ({len(report['superiority'])} models)")
    ranking.add_column("model")
    ranking.add_column("superiority", justify="right")
    ranking.add_column(f"kin (tau {rule.tau:g}, delta {rule.delta:g})")
    for model, value in sorted(report["superiority"].items(), key=lambda kv: -kv[1]):
        kin_of = sorted(
            p["b"] if p["a"] == model else p["a"]
            for p in report["pairs"]
            if p["kin"] and model in (p["a"], p["b"])
        )
        ranking.add_row(model, f"{value:.3f}", ", ".join(kin_of) or "-")
    out.print(ranking)
    for model, missing in sorted(loaded.imputed.items()):
        out.print(f"{model}: no score for {', '.join(missing)} (the column's mean is used)")
    kin_count = sum(p["kin"] for p in report["pairs"])
    out.print(f"{kin_count} of {len(report['pairs'])} model pairs are kin")


def competency(
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """The live pool: prior, online and blended superiority, comparisons in the window, kin now.

    Recomputed from the verdicts on karma.preferences in the rating stage's current window. A
    checkpoint `karma train` wrote is a row of its own (MODEL@vK, from version 2 on), whose prior
    is its parent's blended superiority."""
    settings = settings_or_exit(config, bootstrap_servers=bootstrap)
    try:
        profiles = load_profiles(settings.kin.profiles)
    except ProfileError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    window = run_or_exit(window_verdicts(settings))
    rows = pool_table(
        settings.model_names,
        profiles,
        settings.kin.rule(),
        window.tallies,
        evidence=settings.competency.evidence,
        scale=settings.competency.scale,
    )
    span = "-".join(time.strftime("%H:%M:%S", time.localtime(t)) for t in (window.start_s, window.end_s))
    if as_json:
        print(
            json.dumps(
                {
                    "window": {"start_s": window.start_s, "end_s": window.end_s},
                    "preferences": window.preferences,
                    "online": settings.competency.online,
                    "models": rows,
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"competency: {window.preferences} verdicts in the window {span}")
    for column in ("model", "prior", "online", "blended", "comparisons", "kin now"):
        table.add_column(column, justify="left" if column in ("model", "kin now") else "right")
    for row in rows:
        table.add_row(
            f"{row['model']}{'' if row['has_profile'] else ' (no profile)'}",
            f"{row['prior']:.3f}",
            "-" if row["online"] is None else f"{row['online']:.3f}",
            f"{row['blended']:.3f}",
            f"{row['comparisons']:g}",
            ", ".join(row["kin"]) or "-",  # type: ignore[arg-type]
        )
    out.print(table)
    if not settings.competency.online:
        out.print("competency.online is false: the rating stage pairs by the prior only")
