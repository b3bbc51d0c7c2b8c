"""`karma loop --lab`: the continual-alignment loop turned on the lab and measured (the work is in
tools/evaluation/loop.py; this module is its options and its messages)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from karma.cli.common import BootstrapOption, console, new_progress, out, settings_or_exit
from karma.cli.local_broker import broker_or_exit
from karma.tools.evaluation import EvalError
from karma.tools.evaluation.loop import run_loop, write_loop
from karma.tools.evaluation.training import heldout_examples, stream_prompts
from karma.tools.train import DpoSettings, TrainError


def loop(
    lab: Annotated[Path, typer.Option(help="The lab's folder (`karma lab build`).")] = Path("karma-out/lab"),
    student: Annotated[str, typer.Option(help="The lab model trained each round.")] = "lab-generalist-m",
    rounds: Annotated[
        int, typer.Option(min=1, help="DPO rounds (and one more chunk to measure the last).")
    ] = 3,
    per_round: Annotated[
        int,
        typer.Option(min=1, help="Stream prompts per skill in each round (held out, not the profile set)."),
    ] = 40,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="DPO learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over a round's preferences.")] = 2,
    sft_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the chosen answers' NLL beside DPO (0: DPO alone).")
    ] = 1.0,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the report and the versions.")] = Path(
        "karma-out/loop"
    ),
    port: Annotated[int, typer.Option(help="Port of the local broker (without --bootstrap).")] = 9092,
    bootstrap: BootstrapOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds each round's chunk may take to drain.")] = 600.0,
) -> None:
    """Turn the continual-alignment loop on the lab: generate, rate, judge, train, reload, k times.

    One pipeline with the lab's pool, the kin policy, online competency and the verifier as judge
    runs throughout. Each round a fresh chunk of held-out lab prompts (never the profile set) goes
    through it; then the student's held-out accuracy, its blended superiority and its kin are
    read, and `karma train`'s loop trains one DPO round on the chunk's decided preferences, which
    the worker switches to before the next chunk. Writes OUT/loop-report.md, .json and .png.
    """
    if not (lab / "pool.yaml").is_file():
        console.print(
            f"[red]error:[/] --lab {lab}: no pool.yaml there; build it with `karma lab build --out {lab}`"
        )
        raise typer.Exit(2)
    if not (lab / "models" / student / "config.json").is_file():
        console.print(f"[red]error:[/] --student {student}: no checkpoint at {lab / 'models' / student}")
        raise typer.Exit(2)
    stream = stream_prompts(lab, per_round * (rounds + 1))
    heldout = heldout_examples(lab)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    dpo = DpoSettings(learning_rate=learning_rate, epochs=epochs, sft_weight=sft_weight)
    with broker_or_exit(bootstrap, port, EvalError, TrainError) as servers:
        settings = settings_or_exit(
            lab / "pool.yaml",
            bootstrap_servers=servers,
            metrics_port=0,
            lag_interval_s=0.0,
            judge={"backend": "verifier"},
            policy="kin",
            competency={"online": True},
            topic_prefix=f"loop-{stamp}.",
            app_id=f"karma-loop-{stamp}",
            data_dir=out_dir / "faust",
        )
        console.print(
            f"karma loop: {student}, {rounds} rounds, {len(stream)} stream prompts x "
            f"{len(settings.pool)} models, broker {settings.bootstrap_servers}"
        )
        result = run_loop(
            settings,
            lab,
            student,
            stream,
            heldout,
            rounds,
            out_dir,
            dpo,
            say=lambda line: console.print(escape(line)),
            progress=new_progress,
            timeout_s=timeout,
        )
    paths = write_loop(result, out_dir)
    out.print(paths["md"].read_text(), markup=False, highlight=False)
    out.print(f"report: {paths['md']} (and loop-report.json, loop-report.png)")
