"""`karma loop --lab`: the continual-alignment loop turned k times on the lab, and measured.

One pipeline (a `karma run` worker) with online competency on serves the lab's pool throughout. A
round: a fresh chunk of held-out stream prompts goes in (training.stream_prompts: never the
profile set), the pipeline drains it (answers, kin pairs, the verifier's labels); then the
student's standing is read: its held-out accuracy (the profile set) and, from the verdicts on
karma.preferences in the rating stage's window, its blended superiority and the models kin to it
(what `karma competency` shows); then `karma train`'s loop (tools/train/) trains one DPO round on
the decided preferences that arrived, publishes the version, and the next chunk goes in once
the worker's log says it serves it (so every answer of the student to a chunk is one version's,
and online competency, which tells versions apart, assesses that version on it). Round 0
measures the configured checkpoint; each later round the version the round before trained.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.progress import Progress

from karma.agents.competency import player_of, pool_table, version_of
from karma.agents.kinship import load_profiles
from karma.lab.skills import Example
from karma.schemas.models import Prompt, Winner
from karma.streams.client import window_verdicts
from karma.streams.config import KarmaSettings
from karma.streams.topics import ensure_topics
from karma.tools.evaluation import EvalError
from karma.tools.evaluation.runner import drive
from karma.tools.evaluation.training import quiet_accuracy
from karma.tools.processes import spawn_worker, stop_worker
from karma.tools.train import DpoSettings, TrainOptions, run_trainer


@dataclass(frozen=True)
class Standing:
    """The student after a round's chunk was judged."""

    round: int
    version: int
    accuracy: dict[str, float]
    mean_accuracy: float
    superiority: float  # blended, as the rating stage pairs by it
    online: float | None
    comparisons: float
    kin: list[str]
    decided: int  # decided preferences of the round's chunk (what the next version trains on)
    pool: dict[str, float] = field(default_factory=dict)  # every player's blended superiority then
    dead_letters: int = 0  # of the round's chunk: prompts (or answers) the pipeline gave up on
    train_loss: float | None = None  # of the round that made the next version
    train_seconds: float | None = None


@dataclass
class LoopResult:
    student: str
    standings: list[Standing] = field(default_factory=list)
    seconds: float = 0.0


def chunks(prompts: Sequence[Prompt], count: int) -> list[list[Prompt]]:
    """`count` chunks with every skill in each (the stream is ordered by skill)."""
    return [list(prompts[i::count]) for i in range(count)]


def run_loop(
    settings: KarmaSettings,
    lab: Path,
    student: str,
    stream: Sequence[Prompt],
    heldout: Mapping[str, Sequence[Example]],
    rounds: int,
    out_dir: Path,
    dpo: DpoSettings,
    *,
    say: Callable[[str], object] = print,
    progress: Callable[[], Progress] | None = None,
    timeout_s: float = 600.0,
) -> LoopResult:
    """`rounds` trainings, so `rounds + 1` chunks and standings (see the module docstring)."""
    started = time.monotonic()
    result = LoopResult(student)
    out_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings))
    log_path = out_dir / "worker.log"
    worker = spawn_worker(settings, log_path, "run", "--loglevel", "info")  # info: its switches
    version, path = 1, lab / "models" / student
    earlier = letters_before = 0
    try:
        with (progress or Progress)() as bar:
            for number, chunk in enumerate(chunks(stream, rounds + 1)):
                task = bar.add_task(f"round {number}", total=None)
                new, letters = asyncio.run(
                    drive(settings, chunk, timeout_s, worker, log_path, bar, task, earlier=earlier)
                )
                earlier += len(chunk)
                ids = {p.prompt_id for p in chunk}
                decided = [p for p in new if p.prompt_id in ids and p.winner != Winner.TIE]
                standing = _standing(settings, student, number, version, path, heldout, len(decided))
                standing = replace(standing, dead_letters=letters - letters_before)  # the topic's total
                letters_before = letters
                if number < rounds and decided:
                    options = TrainOptions(
                        model=student, out=out_dir / "train", round_size=len(decided), rounds=1, dpo=dpo
                    )
                    trained = asyncio.run(run_trainer(settings, options, say=say))
                    checkpoint = trained.checkpoints[-1]
                    version, path = checkpoint.version, Path(checkpoint.path)
                    # The next chunk goes in once the worker serves the new version, so that
                    # every answer of the student to it is the new version's.
                    wait_for_switch(log_path, student, version, worker, timeout_s)
                    standing = _with_training(standing, checkpoint.train_loss, checkpoint.train_seconds)
                result.standings.append(standing)
                say(_line(standing))
    finally:
        stop_worker(worker)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def wait_for_switch(
    log_path: Path, model: str, version: int, worker: subprocess.Popen[bytes], timeout_s: float
) -> None:
    """Until the worker's log says it switched `model` to `version` (agents/generation.py logs
    "model M: version K -> V"); EvalError when the worker stopped, or did not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    switched = re.compile(rf"model {re.escape(model)}: version \d+ -> {version} ")
    while not switched.search(log_path.read_text()):
        if worker.poll() is not None:
            raise EvalError(f"the worker stopped (exit {worker.returncode}) before serving version {version}")
        if time.monotonic() > deadline:
            raise EvalError(f"the worker did not switch {model} to version {version} in {timeout_s:.0f} s")
        time.sleep(0.2)


def _standing(
    settings: KarmaSettings,
    student: str,
    number: int,
    version: int,
    path: Path,
    heldout: Mapping[str, Sequence[Example]],
    decided: int,
) -> Standing:
    accuracy = quiet_accuracy(path, heldout)
    window = asyncio.run(window_verdicts(settings))
    player = player_of(student, version)  # online competency knows each version apart
    rows = pool_table(
        [*settings.model_names, player],
        load_profiles(settings.kin.profiles),
        settings.kin.rule(),
        window.tallies,
        evidence=settings.competency.evidence,
        scale=settings.competency.scale,
    )
    row = next(r for r in rows if r["model"] == player)
    pool = {str(r["model"]): float(r["blended"]) for r in rows}  # type: ignore[arg-type]
    return Standing(
        round=number,
        version=version,
        accuracy=accuracy,
        mean_accuracy=statistics.fmean(accuracy.values()),
        superiority=float(row["blended"]),  # type: ignore[arg-type]
        online=None if row["online"] is None else float(row["online"]),  # type: ignore[arg-type]
        comparisons=float(row["comparisons"]),  # type: ignore[arg-type]
        kin=list(row["kin"]),  # type: ignore[call-overload]
        decided=decided,
        pool=pool,
    )


def _with_training(standing: Standing, loss: float, seconds: float) -> Standing:
    return Standing(**{**asdict(standing), "train_loss": loss, "train_seconds": seconds})


def _line(s: Standing) -> str:
    return (
        f"round {s.round}: version {s.version}, held-out accuracy {s.mean_accuracy:.3f}, blended superiority "
        f"{s.superiority:.3f} ({s.comparisons:g} comparisons), kin {', '.join(s.kin) or '-'}, "
        f"{s.decided} decided preferences, {s.dead_letters} dead letters"
    )


def write_loop(result: LoopResult, out_dir: Path) -> dict[str, Path]:
    """loop-report.json, loop-report.md and loop-report.png in `out_dir`."""
    paths = {k: out_dir / f"loop-report.{k}" for k in ("json", "md", "png")}
    document: dict[str, Any] = {
        "student": result.student,
        "seconds": result.seconds,
        "rounds": [asdict(s) for s in result.standings],
    }
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        f"# karma loop: {result.student} ({result.seconds:.0f} s)",
        "",
        "| round | version | held-out accuracy | blended superiority | comparisons | kin "
        "| nearest stronger model (gap) | decided preferences | dead letters |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result.standings:
        above = nearest_stronger(result.student, s)
        stronger = f"{above[0]} ({above[1]:+.3f})" if above else "-"
        lines.append(
            f"| {s.round} | {s.version} | {s.mean_accuracy:.3f} | {s.superiority:.3f} | {s.comparisons:g} | "
            f"{', '.join(s.kin) or '-'} | {stronger} | {s.decided} | {s.dead_letters} |"
        )
    paths["md"].write_text("\n".join(lines) + "\n")
    _plot(result, paths["png"])
    return paths


def nearest_stronger(student: str, standing: Standing) -> tuple[str, float] | None:
    """The model just above the student's version then, and the gap: the kin rule's `delta`
    bounds it for a pair of kin."""
    above = [
        (value - standing.superiority, model)
        for model, value in standing.pool.items()
        if version_of(model)[0] != student and value > standing.superiority
    ]
    if not above:
        return None
    gap, model = min(above)
    return model, gap


def _plot(result: LoopResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s.round for s in result.standings]
    figure, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(rounds, [s.mean_accuracy for s in result.standings], marker="o", label="held-out accuracy")
    ax.plot(rounds, [s.superiority for s in result.standings], marker="s", label="blended superiority")
    for s in result.standings:
        ax.annotate(
            "kin: " + (", ".join(k.removeprefix("lab-") for k in s.kin) or "-"),
            (s.round, s.superiority),
            fontsize=6,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    ax.set_xticks(rounds, [f"{s.round}\n(v{s.version})" for s in result.standings])
    ax.set_xlabel("round (version served)")
    ax.set_title(f"karma loop: {result.student}", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
