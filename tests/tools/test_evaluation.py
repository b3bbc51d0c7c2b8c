"""`karma eval`'s figures and report, on hand-built preferences whose numbers are worked out here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from karma.agents.kinship import load_profiles
from karma.cli import app
from karma.schemas.models import Candidate, Preference, Winner
from karma.streams.config import KarmaSettings, ModelSpec
from karma.tools.evaluation.metrics import histogram, percentile, summarise
from karma.tools.evaluation.report import write_report
from karma.tools.evaluation.runner import (
    ground_truth,
    load_prompts,
    parse_policies,
    simulator_assumptions,
    with_pool,
)
from tests import records

QUALITY = {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pref(
    pid: str,
    prompt: str,
    model_a: str,
    model_b: str,
    winner: Winner,
    consistent: bool,
    gap: float,
    superiority: dict[str, float] | None = None,
) -> Preference:
    def candidate(model: str) -> Candidate:
        return records.candidate(
            model,
            f"r-{prompt}-{model}",
            text=f"{model} says",
            superiority=0.5 if superiority is None else superiority[model],
        )

    return records.preference(
        prompt,
        candidate(model_a),
        candidate(model_b),
        winner,
        pair_id=pid,
        prompt_text="q",
        gap=gap,
        consistent=consistent,
        verdict_ab=winner if consistent else Winner.A,
        verdict_ba=winner if consistent else Winner.B,
        confidence=0.5,
    )


# Four prompts; p4 got no pair. By hand:
#   1 a>b chosen a (better)    right    gap 0.4
#   2 b>d chosen d (worse)     wrong    gap 0.3
#   3 b=c in quality           undecidable gap 0.0
#   4 a/d tie, inconsistent    not a label gap 0.8
#   5 d/a chosen a (better)    right    gap 0.1
#   6 a replay of 1 (same id)  counted once
PREFERENCES = [
    pref("x1", "p1", "a", "b", Winner.A, True, 0.4),
    pref("x2", "p1", "b", "d", Winner.B, True, 0.3),
    pref("x3", "p2", "b", "c", Winner.A, True, 0.0),
    pref("x4", "p2", "a", "d", Winner.TIE, False, 0.8),
    pref("x5", "p3", "d", "a", Winner.B, True, 0.1),
    pref("x1", "p1", "a", "b", Winner.A, True, 0.4),
]


def test_summarise_counts_what_the_hand_count_says() -> None:
    s = summarise("kin", 4, PREFERENCES, QUALITY.__getitem__)
    assert s.pairs == 5
    assert s.pairs_per_prompt == pytest.approx(5 / 4)
    assert s.prompts_with_pairs == pytest.approx(3 / 4)
    assert s.labelled_per_prompt == pytest.approx(4 / 4)
    assert s.position_consistency == pytest.approx(4 / 5)
    assert s.tie_rate == pytest.approx(1 / 5)
    assert s.label_accuracy == pytest.approx(2 / 3) and s.label_accuracy_n == 3
    # |0.9-0.5| + |0.5-0.1| + 0 + |0.9-0.1| + |0.1-0.9| = 2.4 over 5 pairs
    assert s.quality_gap_mean == pytest.approx(0.48)
    # gaps sorted: 0.0 0.1 0.3 0.4 0.8
    assert s.gaps == [0.0, 0.1, 0.3, 0.4, 0.8]
    assert s.gap_mean == pytest.approx(0.32)
    assert s.gap_median == pytest.approx(0.3)
    assert s.gap_p10 == pytest.approx(0.04)  # rank 0.4: 0.0 + 0.4 * (0.1 - 0.0)
    assert s.gap_p90 == pytest.approx(0.64)  # rank 3.6: 0.4 + 0.6 * (0.8 - 0.4)
    counts = s.gap_histogram.counts
    assert len(counts) == 20 and sum(counts) == 5
    assert {i: c for i, c in enumerate(counts) if c} == {0: 1, 2: 1, 6: 1, 8: 1, 16: 1}


# The same kind of pairs with superiorities that disagree with latent quality about d
# (d looks better than b and c on the benchmarks but is the worst model). By hand:
#   pair  judge        zebra (superiority)       judge = zebra?    zebra right (quality)?
#   z1    a            a   (0.70 > 0.60)         agree             yes (0.9 > 0.5)
#   z2    d (B)        d   (0.65 > 0.60)         agree             no  (0.1 < 0.5)
#   z3    b (A)        tie (0.60 = 0.60)         - zebra tie       - no label
#   z4    tie          a   (0.70 > 0.65)         - judge tie       yes (0.9 > 0.1)
#   z5    a (B)        a   (0.70 > 0.65)         agree             yes
#   z6    c (B)        a   (0.70 > 0.60)         disagree          yes (0.9 > 0.5)
#   z7    c (A)        b   (0.60 < 0.61)         disagree          no label: b, c equal in quality
# zebra agreement 3/5, zebra ties 1/7, zebra accuracy 4/5 (six labels, z7 undecidable);
# judge accuracy: z1 right, z2 wrong, z5 right, z6 wrong (z3, z7 undecidable) = 2/4.
SUPERIORITY = {"a": 0.70, "b": 0.60, "c": 0.60, "d": 0.65}
ZEBRA_PREFERENCES = [
    pref("z1", "p1", "a", "b", Winner.A, True, 0.1, SUPERIORITY),
    pref("z2", "p1", "b", "d", Winner.B, True, 0.05, SUPERIORITY),
    pref("z3", "p2", "b", "c", Winner.A, True, 0.0, SUPERIORITY),
    pref("z4", "p2", "a", "d", Winner.TIE, False, 0.05, SUPERIORITY),
    pref("z5", "p3", "d", "a", Winner.B, True, 0.05, SUPERIORITY),
    pref("z6", "p3", "a", "c", Winner.B, True, 0.1, SUPERIORITY),
    pref("z7", "p3", "c", "b", Winner.A, True, 0.01, {**SUPERIORITY, "b": 0.61}),
    pref("z1", "p1", "a", "b", Winner.A, True, 0.1, SUPERIORITY),  # a replay: counted once
]


def test_zebra_is_compared_with_the_judge_on_the_same_pairs() -> None:
    s = summarise("kin", 3, ZEBRA_PREFERENCES, QUALITY.__getitem__)
    assert s.pairs == 7
    assert s.zebra_agreement == pytest.approx(3 / 5) and s.zebra_agreement_n == 5
    assert s.zebra_ties == 1 and s.zebra_tie_rate == pytest.approx(1 / 7)
    assert s.zebra_accuracy == pytest.approx(4 / 5) and s.zebra_accuracy_n == 5
    assert s.label_accuracy == pytest.approx(2 / 4) and s.label_accuracy_n == 4  # the judge, as before
    # Without a ground truth, agreement and ties are still reported; accuracy is not.
    blind = summarise("kin", 3, ZEBRA_PREFERENCES, None)
    assert (blind.zebra_agreement, blind.zebra_ties) == (s.zebra_agreement, 1)
    assert blind.zebra_accuracy is None and blind.zebra_accuracy_n == 0


def test_zebra_has_no_label_where_every_superiority_is_equal_or_not_a_number() -> None:
    s = summarise("kin", 4, PREFERENCES, QUALITY.__getitem__)  # every candidate at 0.5
    assert s.zebra_ties == 5 and s.zebra_tie_rate == 1.0
    assert s.zebra_agreement is None and s.zebra_agreement_n == 0
    assert s.zebra_accuracy is None and s.zebra_accuracy_n == 0
    broken = pref("n1", "p1", "a", "b", Winner.A, True, 0.1, {"a": math.nan, "b": 0.5})
    s = summarise("kin", 1, [broken, ZEBRA_PREFERENCES[0]], QUALITY.__getitem__)
    # The NaN pair gets no zebra verdict at all (neither a label nor a tie); the other one agrees.
    assert (s.zebra_agreement, s.zebra_agreement_n, s.zebra_ties, s.zebra_tie_rate) == (1.0, 1, 0, 0.0)


def test_without_ground_truth_there_is_no_accuracy() -> None:
    s = summarise("kin", 4, PREFERENCES, None)
    assert s.label_accuracy is None and s.label_accuracy_n == 0 and s.quality_gap_mean is None
    assert s.tie_rate == pytest.approx(0.2)


def test_a_policy_with_no_pairs_has_no_shares_rather_than_zeros() -> None:
    s = summarise("kin", 3, [], QUALITY.__getitem__)
    assert (s.pairs, s.pairs_per_prompt, s.prompts_with_pairs) == (0, 0.0, 0.0)
    assert s.gap_mean is s.gap_median is s.gap_p10 is s.position_consistency is s.tie_rate is None
    assert s.label_accuracy is None and sum(s.gap_histogram.counts) == 0


def test_only_ties_and_equal_qualities_leave_accuracy_undefined() -> None:
    prefs = [
        pref("y1", "p1", "b", "c", Winner.A, True, 0.0),
        pref("y2", "p1", "a", "d", Winner.TIE, False, 0.8),
    ]
    s = summarise("sim", 1, prefs, QUALITY.__getitem__)
    assert s.label_accuracy is None and s.label_accuracy_n == 0


def test_percentile_and_histogram_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([0.7], 10) == 0.7
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    top = histogram([0.0, 0.05, 0.999, 1.0])
    assert top.edges[0] == 0.0 and top.edges[-1] == 1.0 and len(top.edges) == 21
    assert top.counts[0] == 1 and top.counts[1] == 1 and top.counts[-1] == 2  # 1.0 is in the last bin


def test_report_files_hold_the_same_numbers(tmp_path: Path) -> None:
    summaries = [
        summarise("kin", 4, PREFERENCES, QUALITY.__getitem__, seconds=1.5, dlq=0, topic_prefix="e-kin."),
        summarise("sup", 4, [], QUALITY.__getitem__, seconds=2.0, dlq=1, topic_prefix="e-sup."),
        summarise(
            "all", 3, ZEBRA_PREFERENCES, QUALITY.__getitem__, seconds=1.0, dlq=0, topic_prefix="e-all."
        ),
    ]
    settings = KarmaSettings(pool=[ModelSpec(name=m) for m in ("gpt-4", "gpt-3.5-turbo")])
    assumptions = simulator_assumptions(settings, {"gpt-4": 50.0, "gpt-3.5-turbo": 40.0})
    paths = write_report(summaries, tmp_path / "out", assumptions, {"prompts": 4, "pool": ["gpt-4"]})

    document = json.loads(paths["report_json"].read_text())
    assert document["policies"] == [s.model_dump(mode="json") for s in summaries]
    assert "gaps" not in document["policies"][0]  # raw values stay out of the JSON
    assert document["policies"][0]["label_accuracy"] == pytest.approx(2 / 3)
    assert document["policies"][1]["tie_rate"] is None
    zebra = document["policies"][2]
    assert (zebra["zebra_agreement"], zebra["zebra_agreement_n"]) == (pytest.approx(0.6), 5)
    assert (zebra["zebra_ties"], zebra["zebra_tie_rate"]) == (1, pytest.approx(1 / 7))
    assert (zebra["zebra_accuracy"], zebra["zebra_accuracy_n"]) == (pytest.approx(0.8), 5)
    assert document["simulator"]["judge"] == {"quality_scale": 0.1, "position_bias": 0.3, "length_bias": 0.5}
    assert document["run"] == {"prompts": 4, "pool": ["gpt-4"]}
    for key in ("gap_plot", "quality_plot"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000

    md = paths["report_md"].read_text()
    assert (
        "| kin | 1.25 | 75.0% | 1.00 | 0.320 | 0.300 | 0.040-0.640 | 80.0% | 20.0% | 66.7% (3) | 0.480 "
        "| n/a | 5 (100.0%) | n/a |" in md
    )
    assert "| 50.0% (4) | 0.400 | 60.0% (5) | 1 (14.3%) | 80.0% (5) |" in md  # `all`: quality gap 2.8 / 7
    assert "| zebra agreement (n) | zebra ties | zebra accuracy (n) |" in md
    assert "**zebra agreement**" in md and "only accuracy against a ground truth tells which" in md
    assert "| sup | 0.00 | 0.0% | 0.00 | n/a |" in md
    assert "position_bias = 0.3" in md and "quality_scale = 0.1" in md
    assert "not tuned towards any policy" in md
    assert "says nothing about how a real judge" in md
    assert "50.0 words on average for gpt-3.5-turbo" not in md  # lowest quality first:
    assert "40.0 words on average for gpt-3.5-turbo" in md
    assert "(gap_distribution.png)" in md and "(quality.png)" in md


def test_report_without_a_simulator_says_there_is_no_ground_truth(tmp_path: Path) -> None:
    paths = write_report([summarise("kin", 4, PREFERENCES, None)], tmp_path, None, {"prompts": 4})
    md = paths["report_md"].read_text()
    assert "no latent quality" in md and "simulated judge" not in md
    assert json.loads(paths["report_json"].read_text())["simulator"] is None


def test_policies_are_checked_by_name() -> None:
    assert parse_policies(None) == ["kin", "sup", "sim", "hybrid", "maxgap", "random", "all"]
    assert parse_policies("kin, all,kin") == ["kin", "all"]
    with pytest.raises(ValueError, match=r"unknown policy best; choose from kin, sup, sim"):
        parse_policies("kin,best")


def test_an_unknown_policy_exits_2_naming_the_valid_ones() -> None:
    result = CliRunner().invoke(app, ["eval", "--policies", "kin,best", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "unknown policy best" in result.output and "maxgap" in result.output


def test_the_default_pool_is_the_whole_profile_table_and_keeps_configured_entries() -> None:
    configured = ModelSpec(name="gpt-4", latent_quality=0.2)
    settings = KarmaSettings(pool=[configured, ModelSpec(name="wizardlm-13b")])
    pooled = with_pool(settings, "profiles")
    assert pooled.model_names == list(load_profiles(None).vectors)
    assert len(pooled.pool) == 16
    assert pooled.pool[pooled.model_names.index("gpt-4")] == configured
    assert with_pool(settings, "config") is settings
    served = KarmaSettings(  # a pool needs two models
        pool=[
            ModelSpec(name="gpt-4", backend="openai", base_url="http://127.0.0.1:1/v1"),
            ModelSpec(name="wizardlm-13b"),
        ]
    )
    assert ground_truth(served) is None  # a real backend has no latent quality
    assert all(spec.backend == "simulated" for spec in with_pool(served, "profiles").pool)

    quality = ground_truth(pooled)
    assert quality is not None
    assert quality("gpt-4") == 0.2  # configured
    assert quality("alpaca-7b") == pytest.approx(load_profiles(None).superiority("alpaca-7b"))
    assumptions = simulator_assumptions(pooled, {})
    assert assumptions is not None
    assert assumptions["quality_source"]["gpt-4"] == "configured"
    assert assumptions["quality_source"]["alpaca-7b"] == "prior superiority"


def test_prompts_default_to_the_bundled_set_and_bad_lines_are_reported(tmp_path: Path) -> None:
    assert len(load_prompts(None)) == 50
    assert [p.prompt_id for p in load_prompts(None, limit=3)] == ["sample-001", "sample-002", "sample-003"]
    file = tmp_path / "p.jsonl"
    file.write_text(
        '{"text": "one", "prompt_id": "one"}\nnot json\n{"text": "one", "prompt_id": "one"}\n"two"\n'
    )
    warnings: list[str] = []
    prompts = load_prompts(file, warn=warnings.append)
    assert [p.text for p in prompts] == ["one", "two"]  # the repeated id once
    assert len(warnings) == 1 and ":2: not valid JSON" in warnings[0]
