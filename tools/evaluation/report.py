"""`karma eval`'s report, from the figures of metrics.py; no Kafka.

`write_report` writes report.md (the tables, what each figure means, the simulator's
assumptions, the run), report.json (the same numbers) and two plots (matplotlib, Agg backend):
gap_distribution.png (the superiority gaps per policy) and quality.png (label accuracy, tie
rate, position consistency, pairs per prompt). `summary_table` is the headline figures as a
rich table for the terminal; `summary_row` the strings both tables share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from karma.tools.evaluation.metrics import PolicySummary


def write_report(
    summaries: Sequence[PolicySummary],
    out_dir: Path,
    assumptions: dict[str, Any] | None,
    info: dict[str, Any],
) -> dict[str, Path]:
    """Writes report.md, report.json (the same numbers), gap_distribution.png and quality.png.

    `assumptions` describes the simulator (see runner.py's `simulator_assumptions`), None for
    real backends; `info` is what the run was (prompts, pool, settings), printed as given.
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
    "checked accuracy (n)",
    "zebra checked accuracy (n)",
)


def summary_row(s: PolicySummary) -> list[str]:
    """One policy's figures as the strings of the Markdown and terminal tables."""
    accuracy = "n/a" if s.label_accuracy is None else f"{_pct(s.label_accuracy)} ({s.label_accuracy_n})"
    agreement = "n/a" if s.zebra_agreement is None else f"{_pct(s.zebra_agreement)} ({s.zebra_agreement_n})"
    zebra_accuracy = "n/a" if s.zebra_accuracy is None else f"{_pct(s.zebra_accuracy)} ({s.zebra_accuracy_n})"
    checked = "n/a" if s.checked_accuracy is None else f"{_pct(s.checked_accuracy)} ({s.checked_accuracy_n})"
    zebra_checked = (
        "n/a"
        if s.zebra_checked_accuracy is None
        else f"{_pct(s.zebra_checked_accuracy)} ({s.zebra_checked_accuracy_n})"
    )
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
        checked,
        zebra_checked,
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
        "- **checked accuracy**: where prompts carry a reference (metadata `reference`, checked as the "
        "`verifier` judge checks it: the metadata's `scorer`, else `judge.scorer`), among the pairs "
        "with exactly one right answer, the share of the judge's non-tie labels that chose it (n "
        "labels); **zebra checked accuracy**: the same for zebra's labels. Unlike label accuracy it "
        "needs no simulator: the truth is the reference, not a latent quality.",
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
    # Imported here, not at the top: the backend must be chosen before pyplot is first imported,
    # and only writing a report pays for loading matplotlib.
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
