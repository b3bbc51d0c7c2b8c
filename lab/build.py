"""`karma lab build`: the prompt files, the trained pool, its measured profiles and its pool YAML.

Layout of the output directory:

    models/<name>/            a saved model (safetensors, config, generation config, tokenizer)
    prompts/train/<skill>.jsonl, prompts/heldout/<skill>.jsonl, prompts/heldout.jsonl
    recipes.json              each model's recipe and the build key (written last: the build's seal)
    profiles.csv              held-out accuracy per skill, as `karma kin --profiles` reads it
    pool.yaml                 a karma config: the pool on the transformers backend, greedy, and
                              kin.profiles naming profiles.csv

The build is keyed by a hash of everything it depends on (recipes, seed, quick, the lab's source
files, the torch and transformers versions): a build whose recipes.json holds the same key is
done already and returns at once. A model whose directory holds the key of its own recipe (the
recipe, the seed, the training code and the versions) is not trained again, so an interrupted
build resumes with the next model and a pool that gains a model trains that model alone.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import importlib.util
import io
import json
import multiprocessing
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from queue import Empty
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from karma.lab.pool import Recipe, recipes
from karma.lab.skills import SKILLS, SPLITS, Example, distinct, prompt_lines, skill_seed

DEFAULT_OUT = Path("karma-out/lab")
DEFAULT_QUICK_OUT = Path("karma-out/lab-quick")
KEY_FILE = "lab-key.txt"
MAX_TOKENS = 8  # the longest answer is 6 characters; a wrong answer is cut soon after


@dataclass(frozen=True)
class SetSizes:
    train: int  # questions per skill in prompts/train (a sample: training draws from the same split)
    heldout: int  # questions per skill in prompts/heldout, and what the profiles are measured on


FULL_SETS = SetSizes(train=300, heldout=70)
QUICK_SETS = SetSizes(train=100, heldout=50)


@dataclass(frozen=True)
class BuildResult:
    out: Path
    cached: bool
    seconds: float
    profiles: dict[str, dict[str, float]]  # model -> skill -> held-out accuracy


class LabError(ValueError):
    """A build that cannot start: the message says why."""


def source_digest(names: Sequence[str] | None = None) -> str:
    """The bytes of the lab's own modules (or of those named): changed code is a changed build."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if names is None or path.name in names:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# What a trained model depends on: its questions, its tokens and its training loop. Neither the
# other recipes nor the build's own code: a pool that gains a model does not retrain the others.
TRAINING_SOURCES = ("skills.py", "tokenizer.py", "train.py")


def _versions() -> dict[str, str]:
    return {"torch": metadata.version("torch"), "transformers": metadata.version("transformers")}


def build_key(pool: Sequence[Recipe], seed: int, quick: bool) -> str:
    inputs = {
        "recipes": [r.as_json() for r in pool],
        "seed": seed,
        "quick": quick,
        "source": source_digest(),
        **_versions(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def model_key(recipe: Recipe, seed: int) -> str:
    inputs = {
        "recipe": recipe.as_json(),
        "seed": seed,
        "source": source_digest(TRAINING_SOURCES),
        **_versions(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def model_seed(seed: int, recipe: Recipe) -> int:
    return skill_seed(seed, recipe.name, f"weights-{recipe.seed_offset}") % 2**31


def _write(path: Path, text: str) -> None:
    """Whole files only: a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def is_built(out: Path, key: str) -> bool:
    try:
        sealed = json.loads((out / "recipes.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(sealed, dict) or sealed.get("build_key") != key:
        return False
    models = [out / "models" / str(r["name"]) / KEY_FILE for r in sealed.get("recipes", [])]
    return all(p.exists() for p in [*models, out / "profiles.csv", out / "pool.yaml"])


def write_prompts(out: Path, seed: int, sizes: SetSizes) -> dict[str, list[Example]]:
    """prompts/<split>/<skill>.jsonl and prompts/heldout.jsonl; returns the held-out questions."""
    heldout: dict[str, list[Example]] = {}
    for split in SPLITS:
        everything = []
        for skill in SKILLS:
            chosen = distinct(skill, split, seed, sizes.train if split == "train" else sizes.heldout)
            lines = prompt_lines(chosen, split)
            _write(out / "prompts" / split / f"{skill}.jsonl", lines)
            everything.append(lines)
            if split == "heldout":
                heldout[skill] = chosen
        if split == "heldout":
            _write(out / "prompts" / "heldout.jsonl", "".join(everything))
    return heldout


def profiles_csv(profiles: Mapping[str, Mapping[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *SKILLS])
    for model, scores in profiles.items():
        writer.writerow([model, *(f"{scores[skill]:.3f}" for skill in SKILLS)])
    return buffer.getvalue()


def read_profiles(path: Path) -> dict[str, dict[str, float]]:
    with path.open(newline="") as handle:
        return {row["model"]: {s: float(row[s]) for s in SKILLS} for row in csv.DictReader(handle)}


def pool_yaml(out: Path, pool: Sequence[Recipe]) -> str:
    """A karma config: the lab's models on the transformers backend, greedy, and their profiles.
    Paths are absolute: a config is read from wherever the worker starts."""
    root = out.resolve()
    config: dict[str, Any] = {
        "pool": [
            {
                "name": r.name,
                "backend": "transformers",
                "model": str(root / "models" / r.name),
                "temperature": 0.0,
                "max_tokens": MAX_TOKENS,
            }
            for r in pool
        ],
        "kin": {"profiles": str(root / "profiles.csv")},
    }
    header = (
        "# Written by `karma lab build`: small Llama models trained from scratch on the lab's skills\n"
        "# (karma.lab). kin.profiles is their measured held-out accuracy per skill.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=console,
    )


# Two worker processes of one torch thread each: on two cores that keeps both busy without
# OpenMP's threads spinning against each other. Measured on this machine while other processes ran:
# a 3-layer model took 3.1 s a step with two threads in one process, 0.4 s with one.
WORKERS = 2
_queue: Any = None  # the worker's end of the progress queue (set by _start_worker)


def _start_worker(queue: Any) -> None:
    global _queue
    _queue = queue


def _train_and_measure(
    recipe: Recipe, target: Path, expected: str, seed: int, heldout: Mapping[str, list[Example]]
) -> dict[str, float]:
    """In a worker process: trains the recipe's model unless `target` holds it already, then
    measures it. Progress goes to the parent through the queue every few steps."""
    from transformers.utils import logging as transformers_logging

    from karma.lab.evaluate import accuracy
    from karma.lab.train import train_model

    transformers_logging.disable_progress_bar()  # the parent draws the bars; tqdm's would tear them

    def report(step: int, loss: float) -> None:
        if step % 10 == 0 or step == recipe.total_steps:
            _queue.put((recipe.name, step, loss))

    if not (target / KEY_FILE).exists() or (target / KEY_FILE).read_text().strip() != expected:
        staging = target.with_name(target.name + ".training")
        shutil.rmtree(staging, ignore_errors=True)
        train_model(
            staging, recipe.size, recipe.steps, model_seed(seed, recipe), recipe.hyper, report, threads=1
        )
        (staging / KEY_FILE).write_text(expected + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    _queue.put((recipe.name, recipe.total_steps, float("nan")))
    return accuracy(target, heldout, threads=1)


def train_and_measure(
    out: Path,
    pool: Sequence[Recipe],
    seed: int,
    key: str,
    heldout: Mapping[str, list[Example]],
    console: Console,
) -> dict[str, dict[str, float]]:
    """Every model trained (or found trained) and measured, WORKERS at a time, longest first."""
    context = multiprocessing.get_context("spawn")  # no fork of a parent that may hold torch's threads
    queue = context.Queue()
    results: dict[str, dict[str, float]] = {}
    with (
        _progress(console) as progress,
        ProcessPoolExecutor(
            max_workers=min(WORKERS, len(pool)),
            mp_context=context,
            initializer=_start_worker,
            initargs=(queue,),
        ) as executor,
    ):
        tasks = {r.name: progress.add_task(r.name, total=r.total_steps, loss=float("nan")) for r in pool}
        futures = {
            executor.submit(
                _train_and_measure, r, out / "models" / r.name, model_key(r, seed), seed, dict(heldout)
            ): r.name
            for r in sorted(pool, key=lambda r: -r.total_steps * r.size.hidden * r.size.layers)
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()  # a worker's exception is raised here
            while True:
                try:
                    name, step, loss = queue.get_nowait()
                except Empty:
                    break
                fields = {} if loss != loss else {"loss": loss}  # NaN: the model was trained already
                progress.update(tasks[name], completed=step, **fields)
    return {r.name: results[r.name] for r in pool}


def profile_table(profiles: Mapping[str, Mapping[str, float]], pool: Sequence[Recipe]) -> Table:
    sizes = {r.name: r for r in pool}
    table = Table(title="held-out accuracy (greedy)")
    table.add_column("model")
    table.add_column("size", justify="right")
    table.add_column("steps", justify="right")
    for skill in SKILLS:
        table.add_column(skill, justify="right")
    table.add_column("mean", justify="right")
    for model, scores in profiles.items():
        recipe = sizes.get(model)
        table.add_row(
            model,
            recipe.size.describe() if recipe else "?",
            str(recipe.total_steps) if recipe else "?",
            *(f"{scores[s]:.0%}" for s in SKILLS),
            f"{sum(scores.values()) / len(scores):.0%}",
        )
    return table


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One build of a directory at a time: a second test session (or a second shell) waits for the
    first and then finds the lab built."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_arguments(out: Path, seed: int) -> None:
    if seed < 0:
        raise LabError(f"--seed must be 0 or more, got {seed}")
    if out.exists() and not out.is_dir():
        raise LabError(f"--out {out} exists and is not a directory")
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise LabError(f"the lab needs {' and '.join(missing)}: pip install -e '.[lab]'")


def build(out: Path, quick: bool = False, seed: int = 0, console: Console | None = None) -> BuildResult:
    """Builds the lab into `out` (or finds it built with the same inputs)."""
    check_arguments(out, seed)
    with exclusive(out):
        return _build(out, quick, seed, console or Console())


def _build(out: Path, quick: bool, seed: int, console: Console) -> BuildResult:
    started = time.perf_counter()
    pool = recipes(quick)
    key = build_key(pool, seed, quick)
    if is_built(out, key):
        profiles = read_profiles(out / "profiles.csv")
        console.print(f"lab {out} is built already (key {key}): cached, nothing to do")
        console.print(profile_table(profiles, pool))
        return BuildResult(out, True, time.perf_counter() - started, profiles)
    (out / "recipes.json").unlink(missing_ok=True)  # unsealed until the whole build is done
    heldout = write_prompts(out, seed, QUICK_SETS if quick else FULL_SETS)
    console.print(
        f"training {len(pool)} models into {out / 'models'} (key {key}, seed {seed}), then measuring "
        "each on the held-out prompts (greedy, through the transformers backend's runner)"
    )
    profiles = train_and_measure(out, pool, seed, key, heldout, console)
    _write(out / "profiles.csv", profiles_csv(profiles))
    _write(out / "pool.yaml", pool_yaml(out, pool))
    seal = {"build_key": key, "seed": seed, "quick": quick, "recipes": [r.as_json() for r in pool]}
    _write(out / "recipes.json", json.dumps(seal, indent=2) + "\n")
    seconds = time.perf_counter() - started
    console.print(profile_table(profiles, pool))
    console.print(f"built {out} in {seconds:.0f} s")
    return BuildResult(out, False, seconds, profiles)
