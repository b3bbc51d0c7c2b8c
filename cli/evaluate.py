"""`karma eval`: compare pairing policies, one pipeline per policy over one prompt set (the work
itself is in tools/evaluation/; this module is its options and its error messages)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from karma.agents.kinship import ProfileError
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
from karma.tools.evaluation import (
    EvalError,
    EvalResult,
    load_prompts,
    parse_policies,
    run_eval,
    summary_table,
    with_pool,
)
from karma.tools.evaluation.training import (
    StudySettings,
    heldout_examples,
    run_study,
    stream_prompts,
    study_size,
    write_study,
)
from karma.tools.train.dpo import DpoSettings


class PoolChoice(StrEnum):
    profiles = "profiles"
    config = "config"
    lab = "lab"


def evaluate(
    prompts: Annotated[Path | None, typer.Option(help="JSONL prompts (default: the bundled 50).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N prompts.")] = None,
    policies: Annotated[
        str | None, typer.Option(help="Comma-separated policies, e.g. kin,sup (default: all seven).")
    ] = None,
    pool: Annotated[
        PoolChoice,
        typer.Option(
            help="profiles: every model of the profile table, simulated; config: the configured pool; "
            "lab: the real models of `karma lab build` (--lab), judged by the verifier."
        ),
    ] = PoolChoice.profiles,
    lab: Annotated[
        Path,
        typer.Option(
            help="--pool lab: the lab's folder (its pool.yaml, and prompts/heldout.jsonl by default)."
        ),
    ] = Path("karma-out/lab"),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the report.")] = Path("karma-out/eval"),
    port: Annotated[int, typer.Option(help="Port of the local broker (without --bootstrap).")] = 9092,
    bootstrap: BootstrapOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds each policy may take to drain.")] = 300.0,
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="--pool lab: then train the student by DPO on each policy's preferences and measure it "
            "(see below).",
        ),
    ] = False,
    student: Annotated[
        str, typer.Option(help="--train: the lab model trained (a model of both labs' pools).")
    ] = "lab-generalist-m",
    seeds: Annotated[int, typer.Option(min=1, help="--train: DPO runs per policy and budget.")] = 3,
    stream_per_skill: Annotated[
        int, typer.Option(min=1, help="--train: stream prompts per skill (held out, not the profile set).")
    ] = 60,
    train_learning_rate: Annotated[
        float, typer.Option(min=0.0, help="--train: the DPO learning rate.")
    ] = 1e-4,
    train_epochs: Annotated[int, typer.Option(min=1, help="--train: passes over the preferences.")] = 2,
    train_sft_weight: Annotated[
        float,
        typer.Option(min=0.0, help="--train: weight of the chosen answers' NLL beside DPO (0: DPO alone)."),
    ] = 1.0,
    config: ConfigOption = None,
) -> None:
    """Compare pairing policies: the pipeline once per policy over one prompt set, then a report.

    Each policy gets a pipeline of its own (fresh topics and consumer group, one `karma run`
    worker). Reported per policy: pairs per prompt, the kinship-gap distribution, judge
    position-consistency, tie rate and, where there is a ground truth (the simulated pool),
    label accuracy against the models' latent quality. Writes OUT/report.md, OUT/report.json
    (the same numbers), OUT/gap_distribution.png and OUT/quality.png; worker logs go to OUT/logs.
    Without --bootstrap it starts the local broker (as `karma demo` does) if none answers.

    With --pool lab: the lab's pool.yaml is the config (unless --config), its held-out prompts the
    prompt set (unless --prompts), and the verifier the judge; the report then gives, per policy,
    how often zebra's label (the more superior model wins) is the checked truth.

    With --pool lab --train: the prompts are a stream of held-out lab questions that are not in the
    profile set (--stream-per-skill each), and after the pipeline runs the student (--student) is
    trained by DPO from its checkpoint on each policy's preferences: labelled by the verifier and,
    as a second arm, by zebra; with an equal number of preferences and with an equal number of
    prompts; --seeds times each. Its accuracy on the profile set before and after, as the mean
    change and its 95% interval, goes to OUT/train-report.md, .json and .png.
    """
    judge_override = {}
    if pool is PoolChoice.lab:
        if not (lab / "pool.yaml").is_file():
            console.print(
                f"[red]error:[/] --lab {lab}: no pool.yaml there; build it with `karma lab build --out {lab}`"
            )
            raise typer.Exit(2)
        config = config or lab / "pool.yaml"
        if train and not (lab / "models" / student / "config.json").is_file():  # before the pipeline runs
            console.print(f"[red]error:[/] --student {student}: no checkpoint at {lab / 'models' / student}")
            raise typer.Exit(2)
        if train and prompts is None:
            prompts = out_dir / "stream.jsonl"
            out_dir.mkdir(parents=True, exist_ok=True)
            stream = stream_prompts(lab, stream_per_skill)
            prompts.write_text("".join(p.model_dump_json() + "\n" for p in stream))
        prompts = prompts or lab / "prompts" / "heldout.jsonl"
        judge_override = {"judge": {"backend": "verifier"}}
    elif train:
        console.print("[red]error:[/] --train needs --pool lab (real models and a checked truth)")
        raise typer.Exit(2)
    try:
        chosen = parse_policies(policies)
    except ValueError as exc:
        console.print(f"[red]error:[/] --policies: {exc}")
        raise typer.Exit(2) from None
    if prompts is not None and not prompts.is_file():
        console.print(f"[red]error:[/] {prompts} is not a readable file")
        raise typer.Exit(2)
    prompt_set = load_prompts(prompts, limit, warn=lambda msg: console.print(f"[yellow]skipped[/] {msg}"))
    if not prompt_set:
        console.print("[red]error:[/] no usable prompt")
        raise typer.Exit(2)
    with broker_or_exit(bootstrap, port, EvalError, TopicMismatchError) as servers:
        settings = settings_or_exit(config, bootstrap_servers=servers, metrics_port=0, **judge_override)
        try:
            settings = with_pool(settings, "config" if pool is PoolChoice.lab else pool.value)
        except ProfileError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        console.print(
            f"karma eval: {len(prompt_set)} prompts x {len(settings.pool)} models ({pool.value}), "
            f"policies {', '.join(chosen)}, broker {settings.bootstrap_servers}"
        )
        info = {
            "prompt_source": str(prompts or "bundled sample_prompts.jsonl"),
            "pool_source": pool.value,
        }
        result = run_eval(
            settings,
            chosen,
            prompt_set,
            out_dir,
            timeout_s=timeout,
            console=console,
            progress=new_progress,
            info=info,
        )
    out.print(summary_table(result.summaries, title=f"karma eval ({result.seconds:.0f} s)"))
    out.print(f"report: {result.paths['report_md']} (and report.json, gap_distribution.png, quality.png)")
    if train:
        dpo = DpoSettings(learning_rate=train_learning_rate, epochs=train_epochs, sft_weight=train_sft_weight)
        _train_study(result, lab, student, seeds, dpo, out_dir)


def _train_study(
    result: EvalResult, lab: Path, student: str, seeds: int, dpo: DpoSettings, out_dir: Path
) -> None:
    student_path = lab / "models" / student
    if not (student_path / "config.json").is_file():
        console.print(f"[red]error:[/] --student {student}: no checkpoint at {student_path}")
        raise typer.Exit(2)
    settings = StudySettings(student, student_path, seeds=seeds, dpo=dpo)
    heldout = heldout_examples(lab)
    with new_progress() as bar:
        task = bar.add_task(f"DPO runs from {student}", total=study_size(result.preferences, settings))
        study = run_study(
            result.preferences,
            heldout,
            settings,
            say=console.print,
            advance=lambda: bar.advance(task),
        )
    paths = write_study(study, out_dir, result.seconds)
    out.print(paths["md"].read_text(), markup=False, highlight=False)
    out.print(f"report: {paths['md']} (and train-report.json, train-report.png)")
