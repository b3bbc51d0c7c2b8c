"""The `karma` command line. Every command is documented by `karma COMMAND --help`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Coroutine
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from karma.schemas.models import problems_of
from karma.streams.audit import Ledger, State
from karma.streams.broker import BrokerError, broker_app
from karma.streams.client import (
    PromptProducer,
    Received,
    TopicNotFoundError,
    parse_prompt_file,
    read_topic,
)
from karma.streams.config import ConfigError, KarmaSettings, load_settings
from karma.streams.processes import broker_for
from karma.streams.topics import TopicMismatchError

T = TypeVar("T")

# soft_wrap: messages stay whole lines in log files and pipes, where rich would wrap at 80.
console = Console(stderr=True, soft_wrap=True)
out = Console()

app = typer.Typer(
    help="KARMA-stream: kin-matched preference pairs for continual LLM alignment, through Kafka.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(broker_app, name="broker")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (see README); KARMA_* variables override it."),
]
BootstrapOption = Annotated[
    str | None, typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers, e.g. 127.0.0.1:9092.")
]


def settings_or_exit(config: Path | None, **overrides: Any) -> KarmaSettings:
    """Loads settings, turning a bad file or value into a one-line message and exit code 2."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            console.print(f"[red]error:[/] {escape(line)}")
    raise typer.Exit(2)


def run_or_exit(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine; an unreachable broker or missing topic is a one-line error, exit code 1."""
    try:
        return asyncio.run(coro)
    except TopicNotFoundError as exc:
        console.print(f"[red]error:[/] {exc}")
    except KafkaError as exc:
        console.print(f"[red]error:[/] Kafka: {exc} (is the broker up? try `karma broker status`)")
    raise typer.Exit(1)


class Role(StrEnum):
    generate = "generate"
    rate = "rate"
    judge = "judge"
    all = "all"


@app.command()
def worker(
    role: Annotated[Role, typer.Argument(help="Stage to run: generate, rate, judge, or all.")],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="generate only: model(s) of the pool to serve (default: all)."),
    ] = None,
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics (0 disables).")] = None,
    loglevel: Annotated[str, typer.Option(help="faust log level.")] = "warning",
) -> None:
    """Run one stage as a faust worker until SIGINT/SIGTERM."""
    from karma.streams.app import ROLES
    from karma.streams.metrics import MetricsPortInUse
    from karma.streams.worker import run_worker

    settings = settings_or_exit(config, bootstrap_servers=bootstrap, metrics_port=metrics_port)
    models = None
    if model:
        if role is not Role.generate:
            console.print("[red]error:[/] --model applies to the generate role only")
            raise typer.Exit(2)
        unknown = sorted(set(model) - set(settings.model_names))
        if unknown:
            console.print(f"[red]error:[/] --model {unknown} not in the pool {settings.model_names}")
            raise typer.Exit(2)
        models = [spec for spec in settings.pool if spec.name in model]
    roles = ROLES if role is Role.all else (role.value,)
    console.print(
        f"karma worker {role.value}: broker {settings.bootstrap_servers}, topics {settings.topic_prefix}*, "
        f"metrics {'off' if not settings.metrics_port else f'http://{settings.metrics_host}:{settings.metrics_port}/metrics'}"
    )
    try:
        run_worker(settings, roles, models, loglevel=loglevel)
    except (MetricsPortInUse, TopicMismatchError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def run(
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port of /metrics (0 disables).")] = None,
    loglevel: Annotated[str, typer.Option(help="faust log level.")] = "warning",
) -> None:
    """Run all stages (generate, rate, judge) in one process: for a laptop, a demo or CI."""
    worker(Role.all, None, config, bootstrap, metrics_port, loglevel)


@app.command()
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
    settings = settings_or_exit(config, bootstrap_servers=bootstrap)
    if not file.is_file():
        console.print(f"[red]error:[/] {file} is not a readable file")
        raise typer.Exit(2)
    sent, skipped = run_or_exit(_submit(settings, file, source))
    console.print(f"submitted {sent} prompt(s) to {settings.topic('prompts')}; skipped {skipped} bad line(s)")


async def _submit(settings: KarmaSettings, file: Path, source: str) -> tuple[int, int]:
    lines = file.read_text().splitlines()
    sent = skipped = 0
    async with PromptProducer(settings, source=source) as producer:
        with _progress() as progress:
            task = progress.add_task("submitting", total=len(lines))
            pending = []
            for line_no, prompt, error in parse_prompt_file(lines, source):
                if error is not None:
                    console.print(f"[yellow]skipped[/] {file}:{line_no}: {error}")
                    skipped += 1
                elif prompt is not None:
                    pending.append(await producer.send_prompt(prompt))
                    sent += 1
                progress.advance(task)
            await asyncio.gather(*pending)
    return sent, skipped


@app.command()
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
    from karma.agents.kinship import ProfileError, kin_report, load_profiles

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


@app.command()
def competency(
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """The live pool: prior, online and blended superiority, comparisons in the window, kin now.

    Recomputed from the verdicts on karma.preferences in the rating stage's current window."""
    from karma.agents.competency import pool_table
    from karma.agents.kinship import ProfileError, load_profiles
    from karma.streams.client import window_verdicts

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


@app.command()
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
    from karma.agents.kinship import ProfileError
    from karma.streams.audit import audit as audit_topics

    settings = settings_or_exit(config, bootstrap_servers=bootstrap)
    try:
        ledger = run_or_exit(audit_topics(settings, backstop_s=backstop_s))
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


class BackendChoice(StrEnum):
    simulated = "simulated"
    openai = "openai"
    vllm = "vllm"
    transformers = "transformers"


BackendOption = Annotated[
    BackendChoice, typer.Option("--backend", help="simulated, openai, vllm or transformers.")
]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="openai: the server, e.g. http://127.0.0.1:8000/v1.")
]
ModelOption = Annotated[str, typer.Option("--model", help="The model: served name or checkpoint.")]


def _backend_spec(kind: type[Any], **fields: Any) -> Any:
    try:
        return kind(**fields)
    except ValidationError as exc:
        console.print(f"[red]error:[/] {escape(problems_of(exc))}")
        raise typer.Exit(2) from None


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    model: ModelOption,
    backend: BackendOption = BackendChoice.simulated,
    base_url: BaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The response as one JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Generate one response with a backend, outside the pipeline: to check a model or server."""
    from karma.agents.backends import BackendError, GenerationRequest, make_generator
    from karma.schemas.models import prompt_id_for
    from karma.streams.config import ModelSpec

    settings = settings_or_exit(config)
    if not prompt.strip():
        console.print("[red]error:[/] the prompt is empty")
        raise typer.Exit(2)
    spec = _backend_spec(ModelSpec, name=model, model=model, backend=backend.value, base_url=base_url)

    async def _generate() -> Any:
        generator = make_generator(spec, settings)
        try:
            [result] = await generator.generate(
                [GenerationRequest(prompt_id_for(prompt), prompt, settings.seed)]
            )
            return result
        finally:
            await generator.close()

    try:
        result = asyncio.run(_generate())
    except BackendError as exc:
        result = exc
    if isinstance(result, BackendError):
        console.print(f"[red]error:[/] {escape(result.reason)}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps({"model": model, "backend": backend.value, **dataclasses.asdict(result)}))
    else:
        out.print(result.text, markup=False, highlight=False)


@app.command()
def judge(
    model: ModelOption,
    prompt: Annotated[str, typer.Option("--prompt", help="The question both answers reply to.")],
    a: Annotated[str, typer.Option("--a", help="Answer A.")],
    b: Annotated[str, typer.Option("--b", help="Answer B.")],
    backend: BackendOption = BackendChoice.simulated,
    base_url: BaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    config: ConfigOption = None,
) -> None:
    """Judge answer A against answer B in both orders, and print the resolved verdict with both
    orders' raw verdicts (an order-dependent verdict is a tie)."""
    from karma.agents.backends import BackendError, make_judge
    from karma.agents.judging import requests_for, resolve_pair
    from karma.schemas.models import Candidate, KinPair, pair_id_for, prompt_id_for

    settings = settings_or_exit(config)
    if not prompt.strip():
        console.print("[red]error:[/] --prompt is empty")
        raise typer.Exit(2)
    judge_spec = _backend_spec(
        type(settings.judge),
        **{**settings.judge.model_dump(), "backend": backend.value, "base_url": base_url, "model": model},
    )
    if backend is not BackendChoice.simulated:
        judge_spec = judge_spec.model_copy(update={"name": model})
    settings = settings.model_copy(update={"judge": judge_spec})
    prompt_id = prompt_id_for(prompt, "cli")
    candidates = [
        Candidate(
            response_id=f"r-{side}", model=f"answer-{side}", text=text, superiority=0.5, simulated=False
        )
        for side, text in (("a", a), ("b", b))
    ]
    pair = KinPair(
        pair_id=pair_id_for(prompt_id, "r-a", "r-b"),
        prompt_id=prompt_id,
        prompt_text=prompt,
        response_a=candidates[0],
        response_b=candidates[1],
        policy="cli",
        similarity=1.0,
        gap=0.0,
    )

    async def _judge() -> list[Any]:
        judge_backend = make_judge(settings)
        try:
            return await judge_backend.judge(requests_for(pair, settings.seed))
        finally:
            await judge_backend.close()

    try:
        first, second = asyncio.run(_judge())
    except BackendError as exc:
        first = second = exc
    for reply in (first, second):
        if isinstance(reply, BackendError):
            console.print(f"[red]error:[/] {escape(reply.reason)}")
            raise typer.Exit(1)
    preference = resolve_pair(pair, first, second, settings.judge.name)
    passes = {
        "verdict_ab": {**first.verdict.model_dump(), "raw": first.raw, "p_first": first.p_first},
        "verdict_ba": {**second.verdict.model_dump(), "raw": second.raw, "p_first": second.p_first},
    }
    if as_json:
        resolved = {
            "winner": preference.winner.value,
            "consistent": preference.consistent,
            "confidence": preference.confidence,
            "judge": preference.judge,
            "simulated": preference.simulated,
        }
        print(json.dumps({**resolved, **passes}))
        return
    verdict = "tie" if preference.winner.value == "TIE" else f"answer {preference.winner.value} wins"
    out.print(f"{verdict} (consistent: {str(preference.consistent).lower()}, judge {preference.judge})")
    out.print(
        f"A shown first: {first.verdict.winner} ({first.verdict.confidence:.2f}) {first.verdict.rationale}"
    )
    out.print(
        f"B shown first: {second.verdict.winner} ({second.verdict.confidence:.2f}) {second.verdict.rationale}"
    )


@app.command()
def tail(
    topic: Annotated[
        str,
        typer.Argument(
            help="prompts, responses, pairs, preferences, dlq, ticks, or any full topic name "
            "(another prefix's, e.g. demo-20261129-101010.preferences, or a changelog)."
        ),
    ],
    config: ConfigOption = None,
    bootstrap: BootstrapOption = None,
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest message.")] = True,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new messages.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
) -> None:
    """Print a topic's messages as JSON lines, decoded (reads without joining a group).

    Each line has topic, partition, offset, the key (text, or key_base64 when it is not UTF-8)
    and the decoded record as "value". A full name ending in .prompts, .responses, .pairs,
    .preferences or .dlq is read as that stage, whatever its prefix; a topic of any other name
    is decoded by the schema id in each message. A message that does not decode shows "error"
    instead; bytes that are not a karma record show "value_base64" and a "note" saying so.
    """
    settings = settings_or_exit(config, bootstrap_servers=bootstrap)

    async def _tail() -> None:
        count = 0
        async for received in read_topic(
            settings, topic, from_beginning=from_beginning, until_end=not follow
        ):
            print(json.dumps(_printable(received)), flush=True)
            count += 1
            if limit is not None and count >= limit:
                return

    with contextlib.suppress(KeyboardInterrupt):
        run_or_exit(_tail())


def _printable(received: Received) -> dict[str, Any]:
    """One message as a JSON-ready row; never a bare offset: the record, why it did not decode,
    or its raw bytes."""
    row: dict[str, Any] = {
        "topic": received.topic,
        "partition": received.partition,
        "offset": received.offset,
    }
    try:
        row["key"] = None if received.key is None else received.key.decode()
    except UnicodeDecodeError:  # karma keys are prompt ids; another writer's may be binary
        row["key_base64"] = base64.b64encode(received.key).decode()
    if received.record is not None:
        # Dead letters carry raw bytes: base64, as JSON mode would fail on bytes that are not UTF-8.
        raw = received.record.model_dump(mode="python")
        binary = {name for name, value in raw.items() if isinstance(value, bytes)}
        decoded = received.record.model_dump(mode="json", exclude=binary)
        row["value"] = {
            name: base64.b64encode(raw[name]).decode() if name in binary else decoded[name] for name in raw
        }
    elif received.typed:
        row["error"] = received.error
    elif received.value is None:
        row["value_base64"] = None
        row["note"] = "the message has no value (a tombstone)"
    else:
        row["value_base64"] = base64.b64encode(received.value).decode()
        row["note"] = f"not a valid karma record ({received.error}); the value is shown as base64"
    return row


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.command()
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
    from karma.streams.demo import run_demo

    try:
        with broker_for(bootstrap, port, keep=keep_broker, say=console.print) as servers:
            console.print(f"broker answering on {servers}")
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
                else resources.files("karma.streams").joinpath("data/sample_prompts.jsonl").read_text()
            ).splitlines()
            summary = run_demo(settings, prompt_lines, output, timeout, console, _progress)
    except (BrokerError, TopicMismatchError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    table = Table(title="KARMA demo")
    for column in ("prompts", "responses", "pairs", "preferences", "ties", "dlq"):
        table.add_column(column, justify="right")
    table.add_row(*(str(summary[c]) for c in ("prompts", "responses", "pairs", "preferences", "ties", "dlq")))
    out.print(table)
    out.print(f"preferences written to {output} (simulated responses: not training data)")
    if summary["missing"]:
        console.print(f"[red]{summary['missing']} expected preference(s) did not arrive in {timeout:g} s[/]")
        raise typer.Exit(1)


class PoolChoice(StrEnum):
    profiles = "profiles"
    config = "config"


@app.command("eval")
def evaluate(
    prompts: Annotated[Path | None, typer.Option(help="JSONL prompts (default: the bundled 50).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N prompts.")] = None,
    policies: Annotated[
        str | None, typer.Option(help="Comma-separated policies, e.g. kin,sup (default: all seven).")
    ] = None,
    pool: Annotated[
        PoolChoice,
        typer.Option(
            help="profiles: every model of the profile table, simulated; config: the configured pool."
        ),
    ] = PoolChoice.profiles,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder of the report.")] = Path("karma-out/eval"),
    port: Annotated[int, typer.Option(help="Port of the local broker (without --bootstrap).")] = 9092,
    bootstrap: BootstrapOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds each policy may take to drain.")] = 300.0,
    config: ConfigOption = None,
) -> None:
    """Compare pairing policies: the pipeline once per policy over one prompt set, then a report.

    Each policy gets a pipeline of its own (fresh topics and consumer group, one `karma run`
    worker). Reported per policy: pairs per prompt, the kinship-gap distribution, judge
    position-consistency, tie rate and, where there is a ground truth (the simulated pool),
    label accuracy against the models' latent quality. Writes OUT/report.md, OUT/report.json
    (the same numbers), OUT/gap_distribution.png and OUT/quality.png; worker logs go to OUT/logs.
    Without --bootstrap it starts the local broker (as `karma demo` does) if none answers.
    """
    from karma.agents.kinship import ProfileError
    from karma.streams.evaluation import EvalError, load_prompts, parse_policies, run_eval, summary_table
    from karma.streams.evaluation import with_pool as eval_pool

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
    try:
        with broker_for(bootstrap, port, say=console.print) as servers:
            settings = settings_or_exit(config, bootstrap_servers=servers, metrics_port=0)
            try:
                settings = eval_pool(settings, pool.value)
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
                progress=_progress,
                info=info,
            )
    except (BrokerError, EvalError, TopicMismatchError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (KafkaError, TimeoutError) as exc:
        where = bootstrap or f"127.0.0.1:{port}"
        console.print(f"[red]error:[/] Kafka: {exc or 'timed out'} (is the broker at {where} up?)")
        raise typer.Exit(1) from None
    out.print(summary_table(result.summaries, title=f"karma eval ({result.seconds:.0f} s)"))
    out.print(f"report: {result.paths['report_md']} (and report.json, gap_distribution.png, quality.png)")


@app.command("simulated-server")
def simulated_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    latency_s: Annotated[
        float, typer.Option("--latency-s", min=0.0, help="Seconds every chat request waits first.")
    ] = 0.0,
    fail_first: Annotated[int, typer.Option(min=0, help="The first N chat requests get HTTP 500.")] = 0,
    rate_limit_first: Annotated[
        int,
        typer.Option(min=0, help="The first N chat requests (after --fail-first's) get 429, Retry-After: 0."),
    ] = 0,
    fail_when: Annotated[
        list[str] | None,
        typer.Option(help="A chat request whose messages contain TEXT always gets 500 (repeatable)."),
    ] = None,
    fail_model_after: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=N: requests for MODEL get 500 after its first N (a model failing mid-run)."),
    ] = None,
    malformed_first: Annotated[
        int, typer.Option(min=0, help="The first N judge replies are not JSON (HTTP 200).")
    ] = 0,
    malformed_always: Annotated[
        bool, typer.Option("--malformed-always", help="Every judge reply is not JSON.")
    ] = False,
    first_always_wins: Annotated[
        bool, typer.Option("--first-always-wins", help="An order-dependent judge: answer A always wins.")
    ] = False,
    quality: Annotated[
        list[str] | None,
        typer.Option(help="MODEL=Q: latent quality in [0, 1] instead of the profile's (repeatable)."),
    ] = None,
    profiles: Annotated[
        Path | None,
        typer.Option("--profiles", help="Benchmark CSV or YAML (default: the bundled 16-model table)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Judge seed; generation seed when a request has none.")] = 0,
    position_bias: Annotated[float, typer.Option(help="Judge: log-odds bonus of the first shown.")] = 0.3,
    length_bias: Annotated[float, typer.Option(help="Judge: log-odds per log length ratio.")] = 0.5,
    temperature: Annotated[
        float, typer.Option(help="Judge: quality gap that moves the log-odds by 1 (quality_scale).")
    ] = 0.1,
) -> None:
    """Serve the SIMULATED models as an OpenAI-compatible chat-completions API, for tests.

    Not a language model: every reply says it is simulated. Judge requests (the judge prompt's
    fenced answers) get a simulated verdict; anything else a simulated generation. The fault
    options make it slow, failing, rate-limited, malformed or order-dependent. GET /stats counts.
    """
    from rich.markup import escape

    from karma.agents.backends.simulated_server import ServerOptions, parse_fail_after, parse_qualities, serve
    from karma.agents.kinship import ProfileError

    try:
        options = ServerOptions(
            latency_s=latency_s,
            fail_first=fail_first,
            rate_limit_first=rate_limit_first,
            fail_when=tuple(fail_when or ()),
            fail_model_after=parse_fail_after(fail_model_after or []),
            malformed_first=malformed_first,
            malformed_always=malformed_always,
            first_always_wins=first_always_wins,
            qualities=parse_qualities(quality or []),
            profiles=profiles,
            seed=seed,
            position_bias=position_bias,
            length_bias=length_bias,
            temperature=temperature,
        )
        serve(host, port, options)
    except (ValueError, ProfileError) as exc:  # ProfileError is a ValueError; named for the reader
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(1) from None


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


DEFAULT_LOG_FILE = Path("karma-out/karma.log")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The handlers set_up_logging installed, so that a second call (CliRunner in tests) replaces them.
_installed_handlers: list[logging.Handler] = []


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler (delay=True) that also makes its folder at the first record, so a run that
    logs nothing leaves nothing behind; a file it cannot write is one line on stderr, once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")
        self._failed = False

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self._failed:
            self._failed = True
            reason = sys.exc_info()[1]
            print(f"karma: cannot write the log file {self.baseFilename}: {reason}", file=sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (as logging's last resort does), so a handler
    left from a CliRunner invocation never writes to that runner's closed stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def set_up_logging(loglevel: str | None, log_file: Path | None) -> None:
    """Routes library log records (aiokafka, faust, mode, asyncio, ...) away from the terminal.

    They go to `log_file` at WARNING and above (and at `loglevel` if lower), and to stderr only
    at `loglevel` and above when it is given. Installed on the root logger, so without it
    Python's last-resort handler would print aiokafka's retried, harmless errors (e.g.
    NotLeaderForPartition on a topic created a moment ago) between the CLI's own lines. A faust
    worker replaces the root handlers with its own at start-up: `worker --loglevel` governs it.
    """
    root = logging.getLogger()
    for handler in _installed_handlers:
        root.removeHandler(handler)
        handler.close()
    _installed_handlers.clear()
    terminal = logging.getLevelNamesMapping()[loglevel.upper()] if loglevel else None
    formatter = logging.Formatter(_LOG_FORMAT)
    levels = []
    if log_file is not None:
        file_level = min(logging.WARNING, terminal if terminal is not None else logging.WARNING)
        _installed_handlers.append(_LazyFileHandler(log_file))
        _installed_handlers[-1].setLevel(file_level)
        levels.append(file_level)
    if terminal is not None:
        _installed_handlers.append(_StderrHandler())
        _installed_handlers[-1].setLevel(terminal)
        levels.append(terminal)
    if not _installed_handlers:
        # Neither file nor terminal: a handler that drops everything keeps the last resort quiet.
        _installed_handlers.append(logging.NullHandler())
    for handler in _installed_handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(min(levels, default=logging.WARNING))


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


if __name__ == "__main__":
    main()
