"""`karma eval`: the pipeline once per pairing policy over one prompt set, and a report on what
each policy's preferences look like.

The figures (`summarise`) and the report (`write_report`) are pure functions of the collected
preferences, tested without Kafka. `run_eval` runs one real pipeline per policy: a fresh topic
prefix and consumer group, one `karma run` worker, the prompts submitted, then a wait until the
pipeline has *drained*. How many pairs a policy yields cannot be predicted (online competency
moves superiority as verdicts arrive), so draining is measured: every response is on the
responses topic, the worker's group has committed everything on the responses and pairs topics,
and every pair has its preference.

Beside the configured judge, every policy's preferences are also labelled by ZEBRA (agents/backends/zebra.py:
the more superior model's response wins), from the superiorities the preferences already carry,
so the two labellers are compared on the same pairs without another run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from karma.agents.backends.zebra import zebra_winner
from karma.agents.policies import POLICIES
from karma.schemas.models import Preference, Prompt, Winner
from karma.streams.client import RECORD_OF_STAGE, PromptProducer, parse_prompt_file, read_topic
from karma.streams.codecs import DecodeError, decode
from karma.streams.config import KarmaSettings, ModelSpec
from karma.streams.lag import LagMonitor
from karma.streams.processes import spawn_worker, stop_worker
from karma.streams.topics import ensure_topics

PoolSource = Literal["profiles", "config"]
GAP_BIN_WIDTH = 0.05  # superiority gaps live in [0, 1]: 20 bins
POLL_INTERVAL_S = 1.0
# Same quality within float noise: such a pair has no right answer, so it is left out of accuracy.
QUALITY_EPSILON = 1e-9


class EvalError(RuntimeError):
    """An evaluation that could not run or did not drain; the message says which policy and why."""


class Histogram(BaseModel):
    """Counts per bin: bin i is [edges[i], edges[i + 1]), the last one closed."""

    edges: list[float]
    counts: list[int]


class PolicySummary(BaseModel):
    """What one policy's preferences look like. Shares are in [0, 1]; None means "no data"."""

    policy: str
    prompts: int
    pairs: int  # distinct preferences (one per judged pair)
    pairs_per_prompt: float
    prompts_with_pairs: float  # share of prompts with at least one pair
    labelled_per_prompt: float  # non-tie preferences per prompt: what a DPO trainer can use
    gap_mean: float | None
    gap_median: float | None
    gap_p10: float | None
    gap_p90: float | None
    gap_histogram: Histogram  # bins of GAP_BIN_WIDTH
    position_consistency: float | None  # share of preferences whose two verdicts agreed
    tie_rate: float | None
    label_accuracy: float | None  # share of decidable labels that chose the truly better model
    label_accuracy_n: int  # how many labels label_accuracy is computed over
    quality_gap_mean: float | None  # mean |latent quality difference| of the pairs
    # ZEBRA (the more superior model wins) on the same pairs, from the superiorities they carry:
    zebra_agreement: float | None = None  # share of zebra's labels that match the judge's...
    zebra_agreement_n: int = 0  # ...over the pairs both labelled (judge not a tie, zebra not a tie)
    zebra_ties: int = 0  # pairs of two equally superior models: zebra has no label
    zebra_tie_rate: float | None = None
    zebra_accuracy: float | None = None  # as label_accuracy, for zebra's labels
    zebra_accuracy_n: int = 0
    seconds: float | None = None  # wall time of this policy's run
    dlq: int = 0  # dead letters of this policy's run
    topic_prefix: str | None = None  # where its records stay, for `karma tail`
    gaps: list[float] = Field(default_factory=list, exclude=True)  # raw, for the plots only


def summarise(
    policy: str,
    prompts_count: int,
    preferences: Iterable[Preference],
    quality: Callable[[str], float] | None,
    **extra: Any,
) -> PolicySummary:
    """The figures of one policy's preferences (de-duplicated by id: delivery is at least once).

    `quality` is the ground truth (a model's latent quality) where there is one, else None.
    `extra` fills the run fields (seconds, dlq, topic_prefix).
    """
    unique = list({p.preference_id: p for p in preferences}.values())
    n = len(unique)
    gaps = sorted(p.gap for p in unique)
    labelled = [p for p in unique if p.winner is not Winner.TIE]
    # The same preferences as zebra labels them; a non-finite superiority gets no zebra label at all.
    relabelled = [(p, z) for p in unique if (z := zebra_label(p)) is not None]
    zebra_labelled = [z for _, z in relabelled if z.winner is not Winner.TIE]
    both = [p.winner is z.winner for p, z in relabelled if Winner.TIE not in (p.winner, z.winner)]
    zebra_ties = len(relabelled) - len(zebra_labelled)
    accuracy, decidable, quality_gap = None, 0, None
    zebra_accuracy, zebra_decidable = None, 0
    if quality is not None:
        accuracy, decidable = label_accuracy(labelled, quality)
        zebra_accuracy, zebra_decidable = label_accuracy(zebra_labelled, quality)
        if unique:
            quality_gap = statistics.fmean(
                abs(quality(p.response_a.model) - quality(p.response_b.model)) for p in unique
            )
    per_prompt = 1 / prompts_count if prompts_count else 0.0
    return PolicySummary(
        policy=policy,
        prompts=prompts_count,
        pairs=n,
        pairs_per_prompt=n * per_prompt,
        prompts_with_pairs=len({p.prompt_id for p in unique}) * per_prompt,
        labelled_per_prompt=len(labelled) * per_prompt,
        gap_mean=statistics.fmean(gaps) if gaps else None,
        gap_median=percentile(gaps, 50),
        gap_p10=percentile(gaps, 10),
        gap_p90=percentile(gaps, 90),
        gap_histogram=histogram(gaps),
        position_consistency=sum(p.consistent for p in unique) / n if n else None,
        tie_rate=(n - len(labelled)) / n if n else None,
        label_accuracy=accuracy,
        label_accuracy_n=decidable,
        quality_gap_mean=quality_gap,
        zebra_agreement=sum(both) / len(both) if both else None,
        zebra_agreement_n=len(both),
        zebra_ties=zebra_ties,
        zebra_tie_rate=zebra_ties / len(relabelled) if relabelled else None,
        zebra_accuracy=zebra_accuracy,
        zebra_accuracy_n=zebra_decidable,
        gaps=gaps,
        **extra,
    )


def label_accuracy(
    labelled: Iterable[Preference], quality: Callable[[str], float]
) -> tuple[float | None, int]:
    """Among non-tie preferences of two models of different latent quality, the share that chose
    the better model, and how many there were (None when there were none)."""
    right = decidable = 0
    for p in labelled:
        chosen, rejected = p.chosen, p.rejected
        assert chosen is not None and rejected is not None  # not a tie
        difference = quality(chosen.model) - quality(rejected.model)
        if abs(difference) > QUALITY_EPSILON:
            decidable += 1
            right += difference > 0
    return (right / decidable if decidable else None), decidable


def zebra_label(p: Preference) -> Preference | None:
    """The preference as ZEBRA would have labelled it, from the superiority each candidate carries
    (what the rating stage used when pairing); None when a superiority is not a finite number."""
    try:
        shown = zebra_winner(p.response_a.superiority, p.response_b.superiority)
    except ValueError:
        return None
    winner = {"A": Winner.A, "B": Winner.B, "tie": Winner.TIE}[shown]
    return p.model_copy(update={"winner": winner, "judge": "zebra"})


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile of sorted values, interpolated linearly between ranks (numpy's default)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def histogram(values: Sequence[float]) -> Histogram:
    """Counts in bins of GAP_BIN_WIDTH from 0 up to the largest value (at least 1); the last bin
    is closed so that a gap of exactly 1 is counted."""
    top = max(1.0, max(values, default=0.0))
    bins = math.ceil(round(top / GAP_BIN_WIDTH, 9))
    edges = [round(i * GAP_BIN_WIDTH, 10) for i in range(bins + 1)]
    counts = [0] * bins
    for value in values:
        # Rounded first: 0.3 / 0.05 is 5.999... in floating point, and 0.3 belongs to [0.30, 0.35).
        counts[min(bins - 1, max(0, math.floor(round(value / GAP_BIN_WIDTH, 9))))] += 1
    return Histogram(edges=edges, counts=counts)


# -- the report ---------------------------------------------------------------------------------


def write_report(
    summaries: Sequence[PolicySummary],
    out_dir: Path,
    assumptions: dict[str, Any] | None,
    info: dict[str, Any],
) -> dict[str, Path]:
    """Writes report.md, report.json (the same numbers), gap_distribution.png and quality.png.

    `assumptions` describes the simulator (see `simulator_assumptions`), None for real backends;
    `info` is what the run was (prompts, pool, settings), printed as given.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report_md": out_dir / "report.md",
        "report_json": out_dir / "report.json",
        "gap_plot": out_dir / "gap_distribution.png",
        "quality_plot": out_dir / "quality.png",
    }
    document = {
        "run": info,
        "simulator": assumptions,
        "policies": [s.model_dump(mode="json") for s in summaries],
    }
    paths["report_json"].write_text(json.dumps(document, indent=2) + "\n")
    _plot_gaps(summaries, paths["gap_plot"])
    _plot_quality(summaries, paths["quality_plot"])
    paths["report_md"].write_text(_markdown(summaries, assumptions, info, paths))
    return paths


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


COLUMNS = (
    "policy",
    "pairs/prompt",
    "prompts with a pair",
    "labelled/prompt",
    "gap mean",
    "gap median",
    "gap p10-p90",
    "position consistency",
    "tie rate",
    "label accuracy (n)",
    "quality gap",
    "zebra agreement (n)",
    "zebra ties",
    "zebra accuracy (n)",
)


def summary_row(s: PolicySummary) -> list[str]:
    """One policy's figures as the strings of the Markdown and terminal tables."""
    accuracy = "n/a" if s.label_accuracy is None else f"{_pct(s.label_accuracy)} ({s.label_accuracy_n})"
    agreement = "n/a" if s.zebra_agreement is None else f"{_pct(s.zebra_agreement)} ({s.zebra_agreement_n})"
    zebra_accuracy = "n/a" if s.zebra_accuracy is None else f"{_pct(s.zebra_accuracy)} ({s.zebra_accuracy_n})"
    spread = "n/a" if s.gap_p10 is None else f"{s.gap_p10:.3f}-{_fmt(s.gap_p90)}"
    return [
        s.policy,
        f"{s.pairs_per_prompt:.2f}",
        _pct(s.prompts_with_pairs),
        f"{s.labelled_per_prompt:.2f}",
        _fmt(s.gap_mean),
        _fmt(s.gap_median),
        spread,
        _pct(s.position_consistency),
        _pct(s.tie_rate),
        accuracy,
        _fmt(s.quality_gap_mean),
        agreement,
        "n/a" if s.zebra_tie_rate is None else f"{s.zebra_ties} ({_pct(s.zebra_tie_rate)})",
        zebra_accuracy,
    ]


def summary_table(summaries: Sequence[PolicySummary], title: str = "karma eval") -> Table:
    """The headline figures (report.md has them all); below about 92 columns, rich wraps cells."""
    table = Table(
        title=title,
        caption="pairs and labelled (non-tie) pairs per prompt; zebra: how often zebra (the more "
        "superior model wins) agrees with the judge, where both give a label; all figures: report.md",
    )
    columns = (
        "policy",
        "pairs",
        "labelled",
        "gap median",
        "consistent",
        "ties",
        "accuracy (n)",
        "zebra (n)",
    )
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for s in summaries:
        row = summary_row(s)
        table.add_row(s.policy, row[1], row[3], row[5], row[7], row[8], row[9], row[11])
    return table


def _markdown(
    summaries: Sequence[PolicySummary],
    assumptions: dict[str, Any] | None,
    info: dict[str, Any],
    paths: dict[str, Path],
) -> str:
    lines = [
        "# KARMA-stream: pairing policies compared",
        "",
        f"{info.get('prompts', '?')} prompts ({info.get('prompt_source', '?')}), "
        f"{len(info.get('pool', []))} models ({info.get('pool_source', '?')}), "
        f"one pipeline per policy; generated {info.get('generated_at', '?')}.",
        "",
    ]
    if assumptions is not None:
        lines += [
            "**Everything below comes from simulated models and a simulated judge.** "
            "It describes the pairing policies' behaviour on this simulator, not the quality "
            "of real preference data.",
            "",
        ]
    lines += [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
        *("| " + " | ".join(summary_row(s)) + " |" for s in summaries),
        "",
        "- **pairs/prompt**: preferences (one per judged pair) per prompt; **prompts with a pair**: "
        "share of prompts that got at least one; **labelled/prompt**: non-tie preferences per "
        "prompt, the rows a DPO trainer can use.",
        "- **gap**: the superiority gap of each pair as the rating stage saw it when pairing "
        "(the kinship gap; with online competency, the blended superiority).",
        "- **position consistency**: share of pairs whose two verdicts (both orders) agreed; "
        "**tie rate**: share recorded as a tie (the judge followed the position, or called a tie).",
        "- **label accuracy**: among non-tie labels of two models of different latent quality, "
        "the share that chose the model of higher latent quality (n labels); **quality gap**: "
        "mean latent-quality difference of the pairs. Only the simulator has a ground truth.",
        "- **zebra**: the same pairs labelled by ZEBRA (the response of the model with the higher "
        "superiority, as the pair carries it, wins; equal superiority is a tie). **zebra agreement**: "
        "among pairs that both the judge and zebra labelled (neither a tie), the share where they "
        "chose the same response (n pairs); **zebra ties**: pairs zebra cannot label (count and "
        "share); **zebra accuracy**: as label accuracy, for zebra's labels. High agreement means the "
        "judge mostly reproduces the competency ranking on these pairs (zebra would have given "
        "nearly the same labels for free); low agreement means it often prefers the weaker model's "
        "answer, a per-prompt judgement zebra cannot make, or noise: only accuracy against a ground "
        "truth tells which. Where latent quality is the prior superiority (the simulator's default), "
        "zebra reads the ground truth itself: its accuracy is 100% unless online competency has "
        "reordered the models, which is no evidence for zebra.",
        "",
        *(
            [
                "With online competency on (`competency.online`), superiority moves as verdicts arrive, "
                "so which pairs a policy picks depends a little on timing and two runs can differ "
                "slightly; `competency.online: false` gives repeatable figures.",
                "",
            ]
            if (info.get("competency") or {}).get("online")
            else []
        ),
        "| policy | pairs | seconds | dead letters | topics |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {s.policy} | {s.pairs} | {_fmt(s.seconds, 1)} | {s.dlq} | `{s.topic_prefix or '-'}*` |"
            for s in summaries
        ),
        "",
        f"![kinship-gap distribution per policy]({paths['gap_plot'].name})",
        "",
        f"![label accuracy, tie rate, position consistency, pairs per prompt]({paths['quality_plot'].name})",
        "",
    ]
    lines += _assumptions_markdown(assumptions)
    lines += [
        "## Run",
        "",
        "```json",
        json.dumps(info, indent=2),
        "```",
        "",
        "The same numbers are in `report.json`.",
        "",
    ]
    return "\n".join(lines)


def _assumptions_markdown(assumptions: dict[str, Any] | None) -> list[str]:
    if assumptions is None:
        return [
            "## Ground truth",
            "",
            "Real backends: there is no latent quality to check labels against, so label "
            "accuracy is not computed.",
            "",
        ]
    judge = assumptions["judge"]
    qualities: dict[str, float] = assumptions["latent_quality"]
    sources: dict[str, str] = assumptions["quality_source"]
    words: dict[str, float] = assumptions.get("mean_words", {})
    lines = [
        "## The simulator's assumptions",
        "",
        "- **Latent quality.** Each model has a true quality in [0, 1]: the value configured as "
        "`latent_quality` in its pool entry, otherwise its prior superiority from the benchmark "
        "profiles (so by default the profiles are exactly right about who is better; online "
        "competency can only confirm them).",
        "- **Judge.** Each pass shows two responses and prefers the one shown first with "
        "probability sigmoid(quality gap / quality_scale + position_bias + length_bias x "
        "log(words first / words second)), with "
        f"quality_scale = {judge['quality_scale']:g}, position_bias = {judge['position_bias']:g}, "
        f"length_bias = {judge['length_bias']:g}. So accuracy falls as the quality gap shrinks "
        f"(a gap of {judge['quality_scale']:g} moves the log-odds by 1), the response shown first "
        "gets a bonus, and so does the longer one.",
        "- **Both orders.** Every pair is judged twice with the order swapped; two verdicts that "
        "disagree (the position won, not the response) are recorded as a tie, never given to a side.",
        "- **Length.** Better models write longer answers (lengths drawn around a mean that grows "
        "with latent quality; `agents/backends/simulated.py`)"
        + (
            f": in this run, {_extremes(words, qualities)}."
            if words and len({m for m in words if m in qualities}) >= 2
            else "."
        ),
        f"- **Seeds.** Every draw is seeded (seed {assumptions['seed']}), by pair id and order, so a "
        "rerun gives the same labels.",
        "",
        "The simulator is not tuned towards any policy: every policy runs with the same "
        "parameters (the configured ones above), chosen before and independently of these results. "
        "Label accuracy on simulated data measures agreement with the simulator's own latent "
        "quality and says nothing about how a real judge labels these pairs. Because accuracy "
        "here rises with the quality gap by construction, a policy that pairs distant models "
        "scores higher on it; that is not evidence that its pairs teach more, which is KARMA's "
        "claim and which this simulator does not model.",
        "",
        "| model | latent quality | source | mean words |",
        "|---|---:|---|---:|",
        *(
            f"| {m} | {q:.3f} | {sources.get(m, '?')} | {_fmt(words.get(m), 1)} |"
            for m, q in sorted(qualities.items(), key=lambda kv: -kv[1])
        ),
        "",
    ]
    return lines


def _extremes(words: dict[str, float], qualities: dict[str, float]) -> str:
    known = sorted((m for m in words if m in qualities), key=lambda m: qualities[m])
    low, high = known[0], known[-1]
    return (
        f"{words[low]:.1f} words on average for {low} (quality {qualities[low]:.2f}) against "
        f"{words[high]:.1f} for {high} ({qualities[high]:.2f})"
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _plot_gaps(summaries: Sequence[PolicySummary], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(summaries) + 2), 4.5))
    positions = list(range(1, len(summaries) + 1))
    filled = [(pos, s.gaps) for pos, s in zip(positions, summaries, strict=True) if s.gaps]
    if filled:
        ax.boxplot(
            [gaps for _, gaps in filled],
            positions=[pos for pos, _ in filled],
            widths=0.6,
            showmeans=True,
            flierprops={"markersize": 3},
        )
    for pos, s in zip(positions, summaries, strict=True):
        ax.annotate(f"n={s.pairs}", (pos, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom")
    ax.set_xticks(positions, [s.policy for s in summaries])
    ax.set_xlim(0.4, len(summaries) + 0.6)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("superiority gap of the pair (kinship gap)")
    ax.set_title("Kinship-gap distribution per policy (box: quartiles, triangle: mean)", pad=18)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_quality(summaries: Sequence[PolicySummary], path: Path) -> None:
    plt = _pyplot()
    panels: list[tuple[str, Callable[[PolicySummary], float | None], bool]] = [
        ("label accuracy (vs latent quality)", lambda s: s.label_accuracy, True),
        ("tie rate", lambda s: s.tie_rate, True),
        ("position consistency", lambda s: s.position_consistency, True),
        ("pairs per prompt (dark: labelled)", lambda s: s.pairs_per_prompt, False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(max(8.0, 1.2 * len(summaries) + 4), 7))
    names = [s.policy for s in summaries]
    x = list(range(len(summaries)))
    for ax, (title, value, share) in zip(axes.flat, panels, strict=True):
        values = [value(s) for s in summaries]
        ax.bar(x, [v or 0.0 for v in values], color="#8fb3d9")
        if not share:
            ax.bar(x, [s.labelled_per_prompt for s in summaries], width=0.5, color="#2f5f8f")
        for i, v in enumerate(values):
            ax.annotate("n/a" if v is None else f"{v:.2f}", (i, v or 0.0), ha="center", va="bottom")
        ax.set_xticks(x, names, rotation=30)
        ax.set_title(title)
        if share:
            ax.set_ylim(0, 1.1)
        else:
            ax.margins(y=0.15)  # room for the value above the tallest bar
            positive = [v for v in values if v]
            if positive and max(positive) > 20 * min(positive):
                # `all` yields k(k-1)/2 pairs a prompt: on a linear axis the one-pair policies vanish.
                ax.set_yscale("symlog", linthresh=1.0)
                ax.set_title(f"{title}, log scale above 1")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- inputs -------------------------------------------------------------------------------------


def parse_policies(text: str | None) -> list[str]:
    """`kin,sup` -> ["kin", "sup"]; None or empty means every policy. Unknown names raise
    ValueError naming the valid ones."""
    if not text or not text.strip():
        return list(POLICIES)
    chosen = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [p for p in chosen if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    if not chosen:
        raise ValueError(f"no policy given; choose from {', '.join(POLICIES)}")
    return chosen


def load_prompts(
    path: Path | None, limit: int | None = None, warn: Callable[[str], None] = lambda _: None
) -> list[Prompt]:
    """The prompts of a JSONL file (default: the bundled 50), de-duplicated by id, first `limit`.
    A bad line is reported through `warn` and skipped."""
    if path is None:
        text = resources.files("karma.streams").joinpath("data/sample_prompts.jsonl").read_text()
    else:
        text = path.read_text()
    prompts: dict[str, Prompt] = {}
    for line_no, prompt, error in parse_prompt_file(text.splitlines(), "karma-eval"):
        if error is not None:
            warn(f"{path or 'sample_prompts.jsonl'}:{line_no}: {error}")
        elif prompt is not None:
            prompts.setdefault(prompt.prompt_id, prompt)
    chosen = list(prompts.values())
    return chosen[:limit] if limit is not None else chosen


def with_pool(settings: KarmaSettings, source: PoolSource) -> KarmaSettings:
    """`config`: the configured pool, backends and all. `profiles`: every model of the profile
    table, simulated, keeping the simulated settings (latent quality, latency) configured for a
    model that is in both."""
    if source == "config":
        return settings
    from karma.agents.kinship import load_profiles

    configured = {spec.name: spec for spec in settings.pool}
    pool = []
    for name in load_profiles(settings.kin.profiles).vectors:
        spec = configured.get(name)
        if spec is None:
            pool.append(ModelSpec(name=name))
        else:
            pool.append(
                ModelSpec(
                    name=name,
                    latent_quality=spec.latent_quality,
                    simulated_latency_s=spec.simulated_latency_s,
                )
            )
    return settings.model_copy(update={"pool": pool})


def _simulated_judge(settings: KarmaSettings) -> Any | None:
    """The simulated judge the worker builds, where the whole pipeline is simulated; else None."""
    if settings.judge.backend != "simulated" or any(spec.backend != "simulated" for spec in settings.pool):
        return None
    from karma.agents.backends.simulated import build_judge

    return build_judge(settings)


def ground_truth(settings: KarmaSettings) -> Callable[[str], float] | None:
    """The latent quality of each model where the whole pipeline is simulated; else None."""
    judge = _simulated_judge(settings)
    return None if judge is None else judge.quality


def simulator_assumptions(settings: KarmaSettings, mean_words: dict[str, float]) -> dict[str, Any] | None:
    """The simulator's parameters as the report states them; None for real backends. Read from
    the judge the worker builds, so the report says what ran whatever the settings are called."""
    judge = _simulated_judge(settings)
    if judge is None:
        return None
    return {
        "judge": {
            "quality_scale": judge.temperature,
            "position_bias": judge.position_bias,
            "length_bias": judge.length_bias,
        },
        "latent_quality": {spec.name: judge.quality(spec.name) for spec in settings.pool},
        "quality_source": {
            spec.name: "configured" if spec.latent_quality is not None else "prior superiority"
            for spec in settings.pool
        },
        "mean_words": mean_words,
        "seed": settings.seed,
    }


# -- running the pipeline -----------------------------------------------------------------------


@dataclass
class EvalResult:
    summaries: list[PolicySummary]
    paths: dict[str, Path]
    seconds: float


def run_eval(
    settings: KarmaSettings,
    policies: Sequence[str],
    prompts: Sequence[Prompt],
    out_dir: Path,
    *,
    timeout_s: float = 300.0,
    console: Console | None = None,
    progress: Callable[[], Progress] | None = None,
    info: dict[str, Any] | None = None,
) -> EvalResult:
    """Runs the pipeline once per policy over `prompts` with `settings.pool`, then writes the
    report into `out_dir`. Raises EvalError naming the policy when a run does not drain."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    quality = ground_truth(settings)
    summaries: list[PolicySummary] = []
    words: dict[str, dict[str, int]] = {}  # model -> response id -> words
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="karma-eval-") as data_dir, _bar(progress) as bar:
        for policy in policies:
            run = settings.model_copy(
                update={
                    "policy": policy,
                    "topic_prefix": f"eval-{stamp}-{policy}.",
                    "app_id": f"karma-eval-{stamp}-{policy}",
                    "data_dir": Path(data_dir) / policy,
                    "metrics_port": 0,
                    "lag_interval_s": 0.0,  # the worker's lag gauge: nobody scrapes it here
                }
            )
            log_path = out_dir / "logs" / f"worker-{policy}.log"
            task = bar.add_task(f"{policy:>7}: starting worker", total=None)
            policy_started = time.monotonic()
            asyncio.run(ensure_topics(run))
            worker = spawn_worker(run, log_path)
            try:
                preferences, dlq = asyncio.run(_drive(run, prompts, timeout_s, worker, log_path, bar, task))
            finally:
                stop_worker(worker)
            for p in preferences:
                for c in (p.response_a, p.response_b):
                    words.setdefault(c.model, {})[c.response_id] = len(c.text.split())
            summaries.append(
                summarise(
                    policy,
                    len(prompts),
                    preferences,
                    quality,
                    seconds=round(time.monotonic() - policy_started, 2),
                    dlq=dlq,
                    topic_prefix=run.topic_prefix,
                )
            )
    seconds = time.monotonic() - started
    mean_words = {m: round(statistics.fmean(ws.values()), 2) for m, ws in sorted(words.items())}
    run_info = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "prompts": len(prompts),
        "pool": settings.model_names,
        "policies": list(policies),
        "bootstrap_servers": settings.bootstrap_servers,
        "partitions": settings.partitions,
        "kin": settings.kin.model_dump(mode="json"),
        "competency": settings.competency.model_dump(mode="json"),
        "judge": settings.judge.model_dump(mode="json"),
        "seed": settings.seed,
        "seconds": round(seconds, 1),
        **(info or {}),
    }
    paths = write_report(summaries, out_dir, simulator_assumptions(settings, mean_words), run_info)
    return EvalResult(summaries=summaries, paths=paths, seconds=seconds)


class _NoProgress:
    """Stands in for a rich Progress when none is wanted."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _bar(progress: Callable[[], Progress] | None) -> Any:
    return progress() if progress is not None else _NoProgress()


class _IdReader:
    """Reads a topic incrementally, without a group, and keeps the distinct ids (and records)
    seen so far: each poll decodes only what arrived since the last one."""

    def __init__(self, settings: KarmaSettings, stage: str, id_field: str) -> None:
        self.name = settings.topic(stage)
        self.model = RECORD_OF_STAGE[stage]
        self.id_field = id_field
        self.ids: set[str] = set()
        # Without a group id, a subscribed consumer is assigned every partition and commits nothing.
        self._consumer = AIOKafkaConsumer(
            self.name,
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
        )
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        await self._consumer.start()
        self._tps = sorted(self._consumer.assignment())

    async def stop(self) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        """Reads up to the end offsets as they are now."""
        ends = await self._consumer.end_offsets(self._tps)
        while not all([await self._consumer.position(tp) >= ends[tp] for tp in self._tps]):
            batch = await self._consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for msg in messages:
                    try:
                        record = decode(msg.value, self.model)
                    except DecodeError:
                        continue  # the worker sends such a message to the DLQ; not ours to count
                    self.ids.add(getattr(record, self.id_field))


@contextlib.contextmanager
def _quiet_offset_errors() -> Iterator[None]:
    """aiokafka logs at ERROR, then retries, the NotLeaderForPartition of offset requests on
    topics created a moment ago; a read that keeps failing shows up as a drain timeout instead."""
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    level = fetcher.level
    fetcher.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        fetcher.setLevel(level)


async def _drive(
    settings: KarmaSettings,
    prompts: Sequence[Prompt],
    timeout_s: float,
    worker: Any,
    log_path: Path,
    bar: Any,
    task: TaskID,
) -> tuple[list[Preference], int]:
    """Submits the prompts, waits until the pipeline has drained, returns its preferences and
    how many dead letters it wrote."""
    policy = settings.policy
    expected = len({p.prompt_id for p in prompts}) * len(settings.pool)
    async with PromptProducer(settings, source="karma-eval") as producer:
        await asyncio.gather(*[await producer.send_prompt(p) for p in prompts])
    readers = {
        "responses": _IdReader(settings, "responses", "response_id"),
        "pairs": _IdReader(settings, "pairs", "pair_id"),
        "preferences": _IdReader(settings, "preferences", "preference_id"),
    }
    # The rating stage may also consume `preferences` (online competency): only the topics whose
    # consumers must be done before the counts are final are checked.
    monitor = LagMonitor(
        settings.bootstrap_servers, settings.app_id, [settings.topic("responses"), settings.topic("pairs")]
    )
    deadline = time.monotonic() + timeout_s
    previous: tuple[int, int, int] | None = None
    lag: dict[TopicPartition, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(_quiet_offset_errors())
        for reader in readers.values():
            await reader.start()
            stack.push_async_callback(reader.stop)
        await monitor.start()
        stack.push_async_callback(monitor.stop)
        while True:
            for reader in readers.values():
                await reader.poll()
            lag = await monitor.read()
            responses, pairs, judged = (readers[s].ids for s in ("responses", "pairs", "preferences"))
            counts = (len(responses), len(pairs), len(judged))
            drained = len(responses) >= expected and bool(lag) and not any(lag.values()) and judged == pairs
            bar.update(
                task,
                description=f"{policy:>7}: {len(responses)}/{expected} responses, "
                f"{len(judged)}/{len(pairs)} pairs judged",
                total=expected + len(pairs),
                completed=len(responses) + len(judged),
            )
            # Twice in a row with nothing new: a pair published just before a commit has landed.
            if drained and counts == previous:
                break
            previous = counts if drained else None
            if worker.poll() is not None:
                raise EvalError(
                    f"policy {policy}: the worker exited with code {worker.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                behind = {f"{tp.topic}[{tp.partition}]": n for tp, n in lag.items() if n}
                raise EvalError(
                    f"policy {policy}: not drained after {timeout_s:g} s: "
                    f"{len(responses)}/{expected} responses, {len(judged)}/{len(pairs)} pairs judged, "
                    f"uncommitted {behind or 'none'}; see the worker log {log_path}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)
    preferences: dict[str, Preference] = {}
    async for received in read_topic(settings, "preferences", until_end=True):
        if isinstance(received.record, Preference):
            preferences.setdefault(received.record.preference_id, received.record)
    dlq = sum([1 async for _ in read_topic(settings, "dlq", until_end=True)])
    return list(preferences.values()), dlq
