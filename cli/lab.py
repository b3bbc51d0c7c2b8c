"""`karma lab build`: small real causal LMs trained here on the CPU, on skills a program checks
(karma.lab), with their prompt files, measured profiles and a pool config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

lab_app = typer.Typer(
    help="Train a pool of small causal LMs from scratch on the CPU, on skills whose answers a program "
    "checks, of different competency in level and in shape.",
    no_args_is_help=True,
)
_err = Console(stderr=True, soft_wrap=True)


@lab_app.command()
def build(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output directory (default: karma-out/lab, or karma-out/lab-quick with --quick).",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="The test suite's pool: six smaller models, fewer steps (minutes)."),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the questions and the weights.")] = 0,
) -> None:
    """Build the lab: prompt files, the trained models, their held-out profiles and pool.yaml.

    A second build with the same inputs (recipes, seed, --quick, the lab's code, torch and
    transformers versions) finds the first and returns at once."""
    from karma.lab.build import DEFAULT_OUT, DEFAULT_QUICK_OUT, LabError
    from karma.lab.build import build as build_lab

    target = out or (DEFAULT_QUICK_OUT if quick else DEFAULT_OUT)
    try:
        build_lab(target, quick=quick, seed=seed, console=Console(soft_wrap=True))
    except LabError as exc:
        _err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
