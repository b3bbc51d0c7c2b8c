"""`karma train`: continual DPO for one model of the pool (the work is in tools/train/; this module
is its options, its signals and its messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import start_http_server
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
from karma.tools.train import (
    DpoSettings,
    PreferenceFilter,
    TrainError,
    TrainOptions,
    TrainResult,
    run_trainer,
)

DEFAULTS = DpoSettings()


def train(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The pool model to train (its checkpoint is version 1).")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the versions go: OUT/MODEL/v2, v3, ... (resumed if there).")
    ] = Path("karma-out/train"),
    round_size: Annotated[int, typer.Option(min=1, help="Preferences per round (per new version).")] = 64,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many rounds (default: until Ctrl-C / SIGTERM).")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(min=0.1, help="Stop when no preference arrived for this many seconds.")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option("--policy", help=f"Only pairs of this policy (repeatable): {', '.join(POLICIES)}."),
    ] = None,
    judge: Annotated[
        list[str] | None,
        typer.Option("--judge", help="Only preferences of this judge (repeatable), e.g. verifier."),
    ] = None,
    min_confidence: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Only preferences the judge is this confident of.")
    ] = None,
    real_only: Annotated[
        bool, typer.Option("--real-only", help="Skip preferences written by simulated judges or models.")
    ] = False,
    method: Annotated[
        str, typer.Option(help="full (every weight) or lora (an adapter, merged into the saved checkpoint).")
    ] = DEFAULTS.method,
    learning_rate: Annotated[
        float, typer.Option(min=0.0, help="DPO learning rate.")
    ] = DEFAULTS.learning_rate,
    beta: Annotated[
        float, typer.Option(min=0.0, help="DPO beta: how far from the parent a round may go.")
    ] = (DEFAULTS.beta),
    epochs: Annotated[int, typer.Option(min=1, help="Passes over a round's preferences.")] = DEFAULTS.epochs,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Preferences per training step.")
    ] = DEFAULTS.batch_size,
    seed: Annotated[int, typer.Option(help="Training seed (a round is repeatable).")] = DEFAULTS.seed,
    group: Annotated[
        str | None,
        typer.Option(help="Consumer group its progress is committed to (default: <app_id>-train-MODEL)."),
    ] = None,
    topic: Annotated[str, typer.Option(help="The preferences topic, or another run's.")] = "preferences",
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve the karma_train_* metrics on this port.")
    ] = None,
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
) -> None:
    """Continual DPO for one model of the pool: rounds of preferences, each a new checkpoint version
    that the generation workers switch to.

    Reads karma.preferences (ties skipped; --policy, --judge, --min-confidence, --real-only
    filter), and every --round-size preferences trains a DPO round (TRL's DPOTrainer, the
    reference model being the round's parent) from the newest version, writes it whole to
    OUT/MODEL/vK (renamed into place) and publishes a Checkpoint record on karma.checkpoints.
    Exactly once across crashes: a trainer killed mid-round trains that round again, from the
    same parent on the same preferences, and never trains on a preference twice.
    """
    unknown = sorted(set(policy or ()) - set(POLICIES))
    if unknown:
        console.print(
            f"[red]error:[/] --policy: unknown {', '.join(unknown)}; choose from {', '.join(POLICIES)}"
        )
        raise typer.Exit(2)
    if method not in ("full", "lora"):
        console.print(f"[red]error:[/] --method: {method!r}; choose full or lora")
        raise typer.Exit(2)
    settings = settings_or_exit(config, "trainer", bootstrap_servers=bootstrap)
    options = TrainOptions(
        model=model,
        out=out_dir,
        round_size=round_size,
        rounds=rounds,
        idle_exit_s=idle_exit,
        preference_filter=PreferenceFilter(
            frozenset(policy or ()), frozenset(judge or ()), min_confidence, real_only
        ),
        dpo=DpoSettings(
            method="lora" if method == "lora" else "full",
            beta=beta,
            learning_rate=learning_rate,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
        ),
        group=group,
        topic=topic,
    )
    if metrics_port is not None:
        start_http_server(metrics_port, "127.0.0.1")
    try:
        result = run_or_exit(_train(settings, options))
    except TrainError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _summarise(result)


async def _train(settings: KarmaSettings, options: TrainOptions) -> TrainResult:
    # SIGTERM and Ctrl-C stop between rounds; a round in training is finished first.
    stop = stop_on_signals()

    def say(line: str) -> None:
        console.print(escape(line))

    return await run_trainer(settings, options, say=say, progress=new_progress, stop=stop)


def _summarise(result: TrainResult) -> None:
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items()))
    versions = ", ".join(str(c.version) for c in result.checkpoints) or "none"
    out.print(
        f"{result.model}: published version(s) {versions}; now at version {result.version}; read "
        f"{result.consumed} message(s)" + (f"; skipped {skipped}" if skipped else ""),
        highlight=False,
        soft_wrap=True,
    )
