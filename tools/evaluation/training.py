"""`karma eval --train`: do kin pairs teach a model more than pairs far apart? Measured on the lab.

The pipeline has run once per policy over one prompt stream (runner.py), each pair labelled by
the verifier. Then, per policy, DPO rounds (tools/train/dpo.py) from the same student checkpoint,
with the same settings, on that policy's preferences, and the student's accuracy on the lab's
held-out prompts (the set its profiles were measured on, never in the stream) before and after:

- two labels (arms): the verifier's (the checked truth), and zebra's (the answer of the more
  superior model wins, whatever it says), from the same pairs;
- two budgets: an equal number of preferences (the smallest policy's count, a random sample of
  each policy's, drawn per seed) and an equal number of prompts (every preference the policy
  made of the stream: kin makes fewer pairs per prompt than `all`, and pays for it here);
- several seeds (the training seed, and the sample of the equal-preferences budget); the change
  in accuracy is reported as its mean and 95% interval over the seeds (Student's t).

Ties are left out (DPO needs a winner); a policy with no decided preference is reported as such.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from karma.lab.evaluate import accuracy
from karma.lab.skills import Example, distinct, prompt_record
from karma.schemas.models import Preference, Prompt, Winner
from karma.tools.evaluation.metrics import zebra_label
from karma.tools.export.rows import row_of
from karma.tools.train.dpo import DpoSettings, train_round

ARMS = ("verifier", "zebra")
BUDGETS = ("equal_preferences", "equal_prompts")
# Student's t, two-sided 95%, by degrees of freedom; 1.96 past the table.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """The mean and its 95% interval (Student's t over the values); one value: no interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# -- the prompts ---------------------------------------------------------------------------------


def lab_seed(lab_dir: Path) -> int:
    return int(json.loads((lab_dir / "recipes.json").read_text())["seed"])


def heldout_examples(lab_dir: Path) -> dict[str, list[Example]]:
    """The held-out questions the lab's profiles were measured on (prompts/heldout/<skill>.jsonl)."""
    found: dict[str, list[Example]] = {}
    for path in sorted((lab_dir / "prompts" / "heldout").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            meta = record["metadata"]
            found.setdefault(meta["skill"], []).append(
                Example(meta["skill"], record["text"], meta["reference"])
            )
    if not found:
        raise ValueError(f"{lab_dir}: no prompts/heldout/*.jsonl (is it a `karma lab build` folder?)")
    return found


def stream_prompts(lab_dir: Path, per_skill: int) -> list[Prompt]:
    """Up to `per_skill` held-out questions of each skill that are not in the profile set: the stream
    the policies pair on (a skill with a small question space, mul, has fewer). The held-out split
    is never trained on by the lab, so the student has seen neither set."""
    heldout = heldout_examples(lab_dir)
    seed = lab_seed(lab_dir)
    prompts = []
    for skill, measured in heldout.items():
        more = _more_heldout(skill, seed, len(measured), per_skill)
        taken = {e.question for e in measured}
        assert not taken & {e.question for e in more}, "the stream overlaps the profile set"
        for i, example in enumerate(more):
            record = prompt_record(example, "heldout", len(measured) + i)
            prompts.append(Prompt.from_json(record | {"prompt_id": f"{record['prompt_id']}-stream"}, "lab"))
    return prompts


def _more_heldout(skill: str, seed: int, measured: int, wanted: int) -> list[Example]:
    """The held-out questions after the first `measured`, as many as there are up to `wanted`."""
    while wanted > 0:
        try:
            return distinct(skill, "heldout", seed, measured + wanted)[measured:]
        except ValueError:  # the skill has fewer distinct held-out questions
            wanted = wanted * 3 // 4
    return []


# -- the study ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySettings:
    student: str
    student_path: Path
    seeds: int = 3
    dpo: DpoSettings = field(default_factory=DpoSettings)
    arms: tuple[str, ...] = ARMS


@dataclass(frozen=True)
class Run:
    arm: str
    budget: str
    policy: str
    seed: int
    preferences: int
    accuracy: dict[str, float]  # per skill, after
    change: float  # mean over skills, after less before
    loss: float
    reward_margin: float
    seconds: float


@dataclass
class StudyResult:
    student: str
    baseline: dict[str, float]
    available: dict[str, dict[str, int]]  # arm -> policy -> decided preferences
    runs: list[Run]
    seconds: float
    settings: dict[str, Any]

    def table(self) -> list[dict[str, Any]]:
        """One row per (arm, budget, policy): preferences, mean change and 95% interval."""
        rows = []
        keys = sorted({(r.arm, r.budget, r.policy) for r in self.runs}, key=_order)
        for arm, budget, policy in keys:
            runs = [r for r in self.runs if (r.arm, r.budget, r.policy) == (arm, budget, policy)]
            mean, low, high = mean_interval([r.change for r in runs])
            skills = sorted(runs[0].accuracy)
            rows.append(
                {
                    "arm": arm,
                    "budget": budget,
                    "policy": policy,
                    "preferences": runs[0].preferences,
                    "seeds": len(runs),
                    "change": mean,
                    "low": low,
                    "high": high,
                    "per_skill_change": {
                        s: statistics.fmean(r.accuracy[s] for r in runs) - self.baseline[s] for s in skills
                    },
                    "seconds": sum(r.seconds for r in runs),
                }
            )
        return rows


def _order(key: tuple[str, str, str]) -> tuple[int, int, str]:
    arm, budget, policy = key
    return (ARMS.index(arm) if arm in ARMS else 9, BUDGETS.index(budget), policy)


def quiet_accuracy(model_dir: Path, heldout: Mapping[str, Sequence[Example]]) -> dict[str, float]:
    """`accuracy` on every core, without transformers' loading bar (one per run, dozens of runs)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return accuracy(model_dir, heldout, threads=len(os.sched_getaffinity(0)))
    finally:
        if shown:
            logging.enable_progress_bar()


def decided(preferences: Sequence[Preference], arm: str) -> list[Preference]:
    """The preferences with a winner under `arm`'s labels: the verifier's own, or zebra's."""
    labelled = preferences if arm == "verifier" else [z for p in preferences if (z := zebra_label(p))]
    return [p for p in labelled if p.winner != Winner.TIE]


def run_study(
    by_policy: Mapping[str, Sequence[Preference]],
    heldout: Mapping[str, Sequence[Example]],
    settings: StudySettings,
    *,
    trainer: Callable[..., Any] = train_round,
    measure: Callable[[Path, Mapping[str, Sequence[Example]]], dict[str, float]] = quiet_accuracy,
    say: Callable[[str], object] = print,
    advance: Callable[[], object] = lambda: None,
) -> StudyResult:
    """Every (arm, budget, policy, seed) DPO run from the student, and its held-out accuracy."""
    started = time.monotonic()
    baseline = measure(settings.student_path, heldout)
    labelled = {arm: {p: decided(prefs, arm) for p, prefs in by_policy.items()} for arm in settings.arms}
    available = {arm: {p: len(prefs) for p, prefs in policies.items()} for arm, policies in labelled.items()}
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="karma-eval-train-") as scratch:
        for arm, policies in labelled.items():
            smallest = min((len(prefs) for prefs in policies.values() if prefs), default=0)
            for budget in BUDGETS:
                for policy, prefs in policies.items():
                    if not prefs:
                        say(f"{arm}/{policy}: no decided preference, not trained")
                        continue
                    for seed in range(settings.seeds):
                        chosen = list(prefs)
                        if budget == "equal_preferences":
                            chosen = random.Random(f"{seed}:{policy}").sample(chosen, smallest)
                        rows = [dict(r) for p in chosen if (r := row_of(p, messages=True))]
                        out = Path(scratch) / f"{arm}-{budget}-{policy}-{seed}"
                        begun = time.monotonic()
                        trained = trainer(settings.student_path, rows, out, replace(settings.dpo, seed=seed))
                        after = measure(out, heldout)
                        runs.append(
                            Run(
                                arm,
                                budget,
                                policy,
                                seed,
                                len(rows),
                                after,
                                statistics.fmean(after.values()) - statistics.fmean(baseline.values()),
                                trained.loss,
                                trained.reward_margin,
                                round(time.monotonic() - begun, 2),
                            )
                        )
                        advance()
    return StudyResult(
        settings.student,
        baseline,
        available,
        runs,
        round(time.monotonic() - started, 1),
        {"seeds": settings.seeds, "arms": list(settings.arms), "dpo": asdict(settings.dpo)},
    )


def study_size(by_policy: Mapping[str, Sequence[Preference]], settings: StudySettings) -> int:
    """How many DPO runs `run_study` will make (for a progress bar)."""
    runs = 0
    for arm in settings.arms:
        trained = sum(1 for prefs in by_policy.values() if decided(prefs, arm))
        runs += trained * len(BUDGETS) * settings.seeds
    return runs


# -- the report -------------------------------------------------------------------------------------


def write_study(result: StudyResult, out_dir: Path, pipeline_seconds: float) -> dict[str, Path]:
    """train-report.json, train-report.md and train-report.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = result.table()
    document = {
        "student": result.student,
        "baseline_accuracy": result.baseline,
        "baseline_mean": statistics.fmean(result.baseline.values()),
        "decided_preferences": result.available,
        "table": table,
        "runs": [asdict(r) for r in result.runs],
        "settings": result.settings,
        "seconds": {"pipeline": round(pipeline_seconds, 1), "training": result.seconds},
    }
    paths = {
        "json": out_dir / "train-report.json",
        "md": out_dir / "train-report.md",
        "png": out_dir / "train-report.png",
    }
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["md"].write_text(_markdown(result, table, pipeline_seconds))
    _plot(table, paths["png"], result.student)
    return paths


def _markdown(result: StudyResult, table: list[dict[str, Any]], pipeline_seconds: float) -> str:
    base = statistics.fmean(result.baseline.values())
    lines = [
        f"# karma eval --train: {result.student}",
        "",
        f"Student accuracy before training: {base:.3f} (mean over skills: "
        + ", ".join(f"{s} {a:.2f}" for s, a in sorted(result.baseline.items()))
        + ").",
        f"Wall time: pipeline {pipeline_seconds:.0f} s, training and measuring {result.seconds:.0f} s.",
        "",
        "| arm | budget | policy | preferences | seeds | change in accuracy (mean) | 95% interval |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['arm']} | {row['budget']} | {row['policy']} | {row['preferences']} | {row['seeds']} | "
            f"{row['change']:+.4f} | [{row['low']:+.4f}, {row['high']:+.4f}] |"
        )
    lines += ["", "Decided preferences per policy (before the budget): " + json.dumps(result.available), ""]
    return "\n".join(lines)


def _plot(table: list[dict[str, Any]], path: Path, student: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["arm"], r["budget"]) for r in table}, key=lambda g: (g[0], g[1]))
    figure, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.2 * max(1, len(groups)), 3.6), sharey=True)
    axes_list = list(axes) if len(groups) > 1 else [axes]
    for ax, (arm, budget) in zip(axes_list, groups, strict=False):
        rows = [r for r in table if (r["arm"], r["budget"]) == (arm, budget)]
        xs = range(len(rows))
        means = [r["change"] for r in rows]
        errors = [[r["change"] - r["low"] for r in rows], [r["high"] - r["change"] for r in rows]]
        colours = ["tab:orange" if r["policy"] == "kin" else "tab:blue" for r in rows]
        ax.bar(xs, means, yerr=errors, color=colours, capsize=3)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), [r["policy"] for r in rows], rotation=45)
        ax.set_title(f"{arm}, {budget.replace('_', ' ')}", fontsize=9)
    axes_list[0].set_ylabel(f"change in {student}'s held-out accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
