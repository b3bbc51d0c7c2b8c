"""Scores users already have: lm-evaluation-harness result files as a profile table. Pure: files
only, no Kafka, no model.

lm-evaluation-harness (0.4) writes one `results_<date>.json` per run under
`<output_path>/<model_name_sanitized>/`: `results` maps each task to its metrics, keyed
`<metric>,<filter>` (`"acc,none"`, `"acc_norm,none"`, `"exact_match,strict-match"`, with
`"<metric>_stderr,<filter>"` and an `alias` beside them); `groups` / `group_subtasks` name the
groups, whose rows in `results` aggregate their subtasks; `n-samples` maps each task to
`{"original": N, "effective": n}`; `higher_is_better` maps each task to `{metric: bool}`;
`model_name` (newer releases) and `config.model_args` (`"pretrained=org/model,dtype=..."`, or a
mapping) name the model. Older files key metrics without a filter (`"acc"`); both are read.

Per task one score: the metric `--metric` names, else `acc_norm` if present, else `acc`, else the
first numeric metric the file gives for it; a filter called `none` wins over others of the same
metric. A task whose only metrics are lower-is-better (perplexity), or that lacks the metric
asked for, is left out and said so; so is a group whose subtasks are columns already (its score is
their aggregate, and counting both would weigh them twice).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karma.tools.profile.table import ProfileTable

PREFERRED = ("acc_norm", "acc")
NOT_METRICS = {"alias", "name", "sample_len", "sample_count"}
# The keys lm-eval itself reads a model's name from in model_args, in its order (peft and delta
# come with pretrained and name the model that was evaluated).
MODEL_ARG_KEYS = ("peft", "delta", "pretrained", "model", "path", "engine")


class LmEvalError(ValueError):
    """A result file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str  # the key as the file writes it, e.g. "acc_norm,none"
    value: float
    samples: int | None  # n-samples' effective count, when the file has it


@dataclass(frozen=True)
class Run:
    """One result file: its model (None when the file names none), its scores and what was left out."""

    path: Path
    model: str | None
    date: float | None
    scores: dict[str, TaskScore]
    left_out: dict[str, str] = field(default_factory=dict)  # task -> why


def results_files(paths: Iterable[Path]) -> list[Path]:
    """The files to read: a file as given, a folder's `results_*.json` at any depth, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(path.rglob("results_*.json"))
            if not inside:
                raise LmEvalError(f"{path}: no results_*.json in this folder")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise LmEvalError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def split_key(key: str) -> tuple[str, str | None]:
    """`"acc_norm,none"` -> ("acc_norm", "none"); `"acc"` -> ("acc", None)."""
    name, comma, fltr = key.partition(",")
    return name, (fltr if comma else None)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # "N/A" stderr, aliases, nested counts
    return float(value) if math.isfinite(value) else None


def choose_metric(
    metrics: Mapping[str, Any], wanted: str | None = None, higher_is_better: Mapping[str, Any] | None = None
) -> tuple[str, float] | str:
    """(key, value) of the task's score, or why there is none."""
    lower_better = {name for name, better in (higher_is_better or {}).items() if better is False}
    candidates: dict[str, list[tuple[str, float]]] = {}  # metric name -> [(key, value)] in file order
    for key, value in metrics.items():
        name, _ = split_key(key)
        number = _number(value)
        if number is None or name in NOT_METRICS or name.endswith("_stderr"):
            continue
        candidates.setdefault(name, []).append((key, number))
    if not candidates:
        return "no numeric metric"

    def pick(name: str) -> tuple[str, float]:
        keyed = candidates[name]
        return next((kv for kv in keyed if split_key(kv[0])[1] == "none"), keyed[0])

    if wanted is not None:
        name = split_key(wanted)[0]
        if wanted in metrics and _number(metrics[wanted]) is not None:
            key, value = wanted, float(metrics[wanted])
        elif name in candidates:
            key, value = pick(name)
        else:
            return f"no metric {wanted!r} (has {', '.join(candidates)})"
        if split_key(key)[0] in lower_better:
            return f"{key} is lower-is-better; a profile needs higher-is-better scores"
        return key, value
    for name in PREFERRED:
        if name in candidates:
            return pick(name)
    usable = [name for name in candidates if name not in lower_better]
    if not usable:
        return f"only lower-is-better metrics ({', '.join(candidates)})"
    return pick(usable[0])


def model_name_of(data: Mapping[str, Any]) -> str | None:
    """The evaluated model as the file names it: `model_name`, else the model in `config.model_args`."""
    name = data.get("model_name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    config = data.get("config")
    args = config.get("model_args") if isinstance(config, dict) else None
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    if isinstance(args, dict):
        for key in MODEL_ARG_KEYS:
            value = args.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def read_run(path: Path, metric: str | None = None) -> Run:
    """One result file's scores, one per task (see the module's rule)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise LmEvalError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise LmEvalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(isinstance(m, dict) for m in results.values()):
        raise LmEvalError(f"{path}: no 'results' mapping of task -> metrics (not an lm-eval results file?)")
    subtasks = data.get("group_subtasks") if isinstance(data.get("group_subtasks"), dict) else {}
    higher = data.get("higher_is_better") if isinstance(data.get("higher_is_better"), dict) else {}
    n_samples = data.get("n-samples") if isinstance(data.get("n-samples"), dict) else {}
    scores: dict[str, TaskScore] = {}
    left_out: dict[str, str] = {}
    for task, metrics in results.items():
        if any(sub in results for sub in subtasks.get(task) or ()):
            left_out[task] = "a group: its subtasks are columns"
            continue
        chosen = choose_metric(metrics, metric, higher.get(task))
        if isinstance(chosen, str):
            left_out[task] = chosen
            continue
        key, value = chosen
        scores[task] = TaskScore(task, key, value, _samples(n_samples.get(task)))
    date = _number(data.get("date"))
    return Run(path=Path(path), model=model_name_of(data), date=date, scores=scores, left_out=left_out)


def _samples(entry: Any) -> int | None:
    if isinstance(entry, dict):
        for key in ("effective", "original"):
            value = entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


@dataclass(frozen=True)
class Merged:
    table: ProfileTable
    metrics: dict[str, dict[str, str]]  # model -> task -> metric key used
    superseded: list[str]  # "model task: FILE replaced by NEWER"


def merge_runs(
    runs: Iterable[Run], model: str | None = None, rename: Mapping[str, str] | None = None
) -> Merged:
    """One table from several runs. Each run's model is `model` when given, else the file's own,
    renamed through `rename` (a pool's checkpoint -> the pool's model name). Several runs of one
    model add up task by task; where two score the same task, the newer (`date`, else the later
    file) wins and the older is listed in `superseded`."""
    rename = rename or {}
    ordered = sorted(
        enumerate(runs), key=lambda ir: (ir[1].date if ir[1].date is not None else -math.inf, ir[0])
    )
    scores: dict[str, dict[str, TaskScore]] = {}
    source: dict[tuple[str, str], Path] = {}
    superseded = []
    columns: dict[str, None] = {}
    for _, run in ordered:
        name = model or run.model
        if name is None:
            raise LmEvalError(
                f"{run.path}: the file names no model (model_name, config.model_args); pass --model"
            )
        name = rename.get(name, name)
        row = scores.setdefault(name, {})
        for task, task_score in run.scores.items():
            if task in row:
                superseded.append(f"{name} {task}: {source[(name, task)]} replaced by {run.path}")
            row[task] = task_score
            source[(name, task)] = run.path
            columns.setdefault(task, None)
    table = ProfileTable(
        columns=tuple(columns),
        scores={m: {t: s.value for t, s in row.items()} for m, row in scores.items()},
        counts={
            m: {t: s.samples for t, s in row.items() if s.samples is not None} for m, row in scores.items()
        },
    )
    metrics = {m: {t: s.metric for t, s in row.items()} for m, row in scores.items()}
    return Merged(table=table, metrics=metrics, superseded=superseded)
