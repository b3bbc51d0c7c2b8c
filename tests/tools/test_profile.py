"""`karma profile`'s pure parts: benchmark lines, scoring and aggregation, the profile table and
its counts read back by the kin loader, and lm-evaluation-harness result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from karma.agents.kinship import load_profiles
from karma.tools.profile import (
    BenchmarkError,
    Failure,
    LmEvalError,
    ProfileTable,
    ScoringError,
    TableError,
    counts_path,
    merge_runs,
    read_benchmark,
    read_run,
    results_files,
    skills_of,
    tally,
    write_table,
)
from karma.tools.profile.benchmark import parse_item
from karma.tools.profile.lm_eval import choose_metric, model_name_of


def line(text: str, **metadata: str) -> str:
    return json.dumps({"text": text, "metadata": metadata})


def half_credit(answer: str, reference: str) -> float:
    """A user's scorer with partial credit: 0.5 for an answer that only starts right."""
    if answer == reference:
        return 1.0
    return 0.5 if answer[:1] == reference[:1] else 0.0


def out_of_range(answer: str, reference: str) -> float:
    return 2.0


# -- benchmark lines -------------------------------------------------------------------------------


def test_a_benchmark_line_becomes_an_item_with_its_scorer(tmp_path: Path) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_text(
        "\n".join(
            [
                line("2+2?", reference="4", skill="math", scorer="numeric"),
                "",  # blank lines are skipped, and still counted in the line numbers
                line("Capital of France?", reference="Paris", skill="geo"),
                json.dumps(
                    {"prompt": "3*3?", "prompt_id": "p-9", "metadata": {"reference": "9", "skill": "math"}}
                ),
            ]
        )
    )
    items = read_benchmark(path, default_scorer="contains")
    assert [(i.skill, i.reference, i.scorer) for i in items] == [
        ("math", "4", "numeric"),
        ("geo", "Paris", "contains"),  # no scorer of its own: the default
        ("math", "9", "contains"),
    ]
    assert [i.where for i in items] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert items[2].prompt.prompt_id == "p-9" and items[2].prompt.text == "3*3?"
    assert skills_of(items) == ["math", "geo"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{not json", "not valid JSON"),
        (line("q", skill="math"), "metadata needs 'reference'"),
        (line("q", reference="4"), "metadata needs 'skill'"),
        (line("q", reference=" ", skill=""), "metadata needs 'reference' and 'skill'"),
        (json.dumps({"metadata": {"reference": "4", "skill": "m"}}), "missing 'text'"),
        (line("q", reference="4", skill="m", scorer="fuzzy"), "unknown scorer 'fuzzy'"),
        (line("q", reference="four", skill="m", scorer="numeric"), "holds no number"),
        (line("q", reference="4", skill="m", scorer="no_such_module_xyz:f"), "cannot import"),
        (json.dumps({"text": "q", "metadata": {"reference": 4, "skill": "m"}}), "metadata"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path: Path, bad: str, says: str) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_text(
        line("fine", reference="a", skill="s") + "\n\n" + bad + "\n" + line("x", reference="b", skill="s")
    )
    with pytest.raises(BenchmarkError) as caught:
        read_benchmark(path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert says in str(caught.value)


def test_an_empty_or_missing_benchmark_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(BenchmarkError, match="no prompts"):
        read_benchmark(empty)
    with pytest.raises(BenchmarkError, match="cannot read benchmark"):
        read_benchmark(tmp_path / "absent.jsonl")


# -- scoring and aggregation -----------------------------------------------------------------------


def items_of(*rows: tuple[str, str, str]) -> list:  # type: ignore[type-arg]
    """Items from (skill, reference, scorer)."""
    return [
        parse_item(line(f"q{i}", reference=ref, skill=skill, scorer=scorer), f"b.jsonl:{i + 1}")
        for i, (skill, ref, scorer) in enumerate(rows)
    ]


def test_accuracy_is_the_mean_score_per_skill_and_a_failure_counts_as_wrong() -> None:
    items = items_of(
        ("math", "4", "numeric"),
        ("math", "10", "numeric"),
        ("math", "7", "numeric"),
        ("geo", "Paris", "contains"),
        ("geo", "Rome", "exact"),
    )
    answers = ["It is 4.", "9", Failure("backend", "HTTP 500"), "paris, of course", " Rome\n"]
    result = tally("m", items, answers)
    assert result.accuracy() == {"math": pytest.approx(1 / 3), "geo": 1.0}
    assert result.counts == {"math": 3, "geo": 2}
    assert result.failed == 1 and result.failures == {"backend": 1}
    assert result.first_failure == {"backend": "HTTP 500"}


def test_a_users_scorer_gives_partial_credit_and_a_misbehaving_one_names_the_line() -> None:
    scorer = f"{__name__}:half_credit"
    items = items_of(("s", "apple", scorer), ("s", "apple", scorer), ("s", "apple", scorer))
    assert tally("m", items, ["apple", "avocado", "pear"]).accuracy() == {"s": pytest.approx(0.5)}
    bad = items_of(("s", "x", "exact"), ("s", "x", f"{__name__}:out_of_range"))
    with pytest.raises(ScoringError, match=r"^b\.jsonl:2: model m: .*returned 2\.0"):
        tally("m", bad, ["x", "x"])


def test_answers_must_match_items_one_to_one() -> None:
    with pytest.raises(ValueError, match="2 items but 1 answers"):
        tally("m", items_of(("s", "a", "exact"), ("s", "b", "exact")), ["a"])


# -- the table, read back by the kin loader --------------------------------------------------------


def test_the_table_loads_back_through_the_kin_loader_with_its_counts_beside_it(tmp_path: Path) -> None:
    table = ProfileTable(
        columns=("math", "geo", "code"),
        scores={
            "strong": {"math": 0.9, "geo": 0.8, "code": 0.7},
            "weak": {"math": 0.1, "geo": 0.2, "code": 0.3},
            "middling": {"math": 0.5, "geo": 0.5},  # never measured on code
        },
        counts={
            "strong": {"math": 10, "geo": 5, "code": 4},
            "weak": {"math": 10, "geo": 5, "code": 4},
            "middling": {"math": 10, "geo": 5},
        },
    )
    out = tmp_path / "nested" / "profiles.csv"
    written, counts = write_table(table, out)
    assert (written, counts) == (out, tmp_path / "nested" / "profiles.counts.csv") == (out, counts_path(out))
    assert out.read_text().splitlines() == [
        "model,math,geo,code",
        "strong,0.9,0.8,0.7",
        "weak,0.1,0.2,0.3",
        "middling,0.5,0.5,",
    ]
    assert counts.read_text().splitlines()[3] == "middling,10,5,"

    profiles = load_profiles(out)
    assert profiles.benchmarks == ("math", "geo", "code")
    # min-max per column over the three models; the missing cell takes its column's mean.
    assert profiles.vectors["strong"] == pytest.approx((1.0, 1.0, 1.0))
    assert profiles.vectors["weak"] == pytest.approx((0.0, 0.0, 0.0))
    assert profiles.vectors["middling"] == pytest.approx((0.5, 0.5, 0.5))
    assert profiles.imputed == {"middling": ("code",)}
    assert profiles.superiority("strong") > profiles.superiority("middling") > profiles.superiority("weak")
    # The counts file is a table of the same shape; the kin loader could read it, but never needs to.
    assert load_profiles(counts).benchmarks == ("math", "geo", "code")


def test_a_table_that_cannot_be_written_says_why(tmp_path: Path) -> None:
    table = ProfileTable(columns=("s",), scores={"m": {"s": 0.5}})
    with pytest.raises(TableError, match="give a .csv name"):
        write_table(table, tmp_path / "profiles.yaml")
    with pytest.raises(TableError, match="not in the table"):
        ProfileTable(columns=("s",), scores={"m": {"t": 0.5}})
    with pytest.raises(TableError, match="not finite"):
        ProfileTable(columns=("s",), scores={"m": {"s": float("nan")}})
    with pytest.raises(TableError, match="no score to write"):
        write_table(ProfileTable(columns=(), scores={"m": {}}), tmp_path / "p.csv")
    with pytest.raises(TableError, match="no model"):
        write_table(ProfileTable(columns=("s",), scores={}), tmp_path / "p.csv")


# -- lm-evaluation-harness result files ------------------------------------------------------------


def lm_eval_results(model_args: str, date: float, arc_easy: float = 0.6561447811447811) -> dict:  # type: ignore[type-arg]
    """A results file as lm-evaluation-harness 0.4 writes it (EvaluationTracker
    .save_results_aggregated: the evaluator's results plus the general config tracker's fields),
    cut to four tasks: two multiple-choice ones with acc and acc_norm, gsm8k with two filters of
    exact_match, wikitext with perplexities only, and the mmlu group over one subtask."""
    return {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "acc,none": arc_easy,
                "acc_stderr,none": 0.009746660584852454,
                "acc_norm,none": 0.5925925925925926,
                "acc_norm_stderr,none": 0.010082326627832872,
            },
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.21,
                "exact_match_stderr,strict-match": "N/A",
                "exact_match,flexible-extract": 0.25,
                "exact_match_stderr,flexible-extract": 0.011,
            },
            "wikitext": {
                "alias": "wikitext",
                "word_perplexity,none": 16.4,
                "word_perplexity_stderr,none": "N/A",
                "byte_perplexity,none": 1.68,
                "bits_per_byte,none": 0.75,
            },
            "mmlu": {"alias": "mmlu", "acc,none": 0.40, "acc_stderr,none": 0.004},
            "mmlu_astronomy": {"alias": " - astronomy", "acc,none": 0.45, "acc_stderr,none": 0.04},
        },
        "groups": {"mmlu": {"alias": "mmlu", "acc,none": 0.40, "acc_stderr,none": 0.004}},
        "group_subtasks": {"mmlu": ["mmlu_astronomy"], "arc_easy": [], "gsm8k": [], "wikitext": []},
        "configs": {"arc_easy": {"task": "arc_easy", "dataset_path": "allenai/ai2_arc", "num_fewshot": 0}},
        "versions": {"arc_easy": 1.0, "gsm8k": 3.0, "wikitext": 2.0, "mmlu": 2, "mmlu_astronomy": 1.0},
        "n-shot": {"arc_easy": 0, "gsm8k": 5, "wikitext": 0, "mmlu_astronomy": 0},
        "higher_is_better": {
            "arc_easy": {"acc": True, "acc_norm": True},
            "gsm8k": {"exact_match": True},
            "wikitext": {"word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False},
            "mmlu": {"acc": True},
            "mmlu_astronomy": {"acc": True},
        },
        "n-samples": {
            "arc_easy": {"original": 2376, "effective": 2376},
            "gsm8k": {"original": 1319, "effective": 100},
            "wikitext": {"original": 62, "effective": 62},
            "mmlu_astronomy": {"original": 152, "effective": 152},
        },
        "config": {
            "model": "hf",
            "model_args": model_args,
            "batch_size": "8",
            "batch_sizes": [],
            "device": "cuda:0",
            "use_cache": None,
            "limit": None,
            "bootstrap_iters": 100000,
            "gen_kwargs": None,
            "random_seed": 0,
            "numpy_seed": 1234,
            "torch_seed": 1234,
            "fewshot_seed": 1234,
        },
        "git_hash": "8138fd5",
        "date": date,
        "transformers_version": "4.56.1",
        "task_hashes": {},
        "model_source": "hf",
        "model_name": model_args.split(",")[0].removeprefix("pretrained="),
        "model_name_sanitized": model_args.split(",")[0].removeprefix("pretrained=").replace("/", "__"),
        "start_time": 2187.1,
        "end_time": 2920.4,
        "total_evaluation_time_seconds": "733.3",
    }


def write_results(folder: Path, data: dict, stamp: str) -> Path:  # type: ignore[type-arg]
    """Where lm-eval puts it: <output_path>/<model_name_sanitized>/results_<date>.json."""
    path = folder / data["model_name_sanitized"] / f"results_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_a_results_file_gives_one_score_per_task_by_the_stated_rule(tmp_path: Path) -> None:
    path = write_results(
        tmp_path, lm_eval_results("pretrained=org/model-a,dtype=bfloat16", 1.7e9), "2026-01-01"
    )
    run = read_run(path)
    assert run.model == "org/model-a"
    assert {t: (s.metric, s.value, s.samples) for t, s in run.scores.items()} == {
        "arc_easy": ("acc_norm,none", 0.5925925925925926, 2376),  # acc_norm before acc
        "gsm8k": ("exact_match,strict-match", 0.21, 100),  # the first numeric metric; effective n
        "mmlu_astronomy": ("acc,none", 0.45, 152),
    }
    assert set(run.left_out) == {"wikitext", "mmlu"}
    assert "lower-is-better" in run.left_out["wikitext"] and "group" in run.left_out["mmlu"]

    asked = read_run(path, metric="acc")
    assert asked.scores["arc_easy"].metric == "acc,none" and "no metric 'acc'" in asked.left_out["gsm8k"]
    flexible = read_run(path, metric="exact_match,flexible-extract")
    assert flexible.scores["gsm8k"].value == 0.25
    assert "lower-is-better" in read_run(path, metric="word_perplexity").left_out["wikitext"]


def test_metric_choice_and_model_names_directly() -> None:
    assert choose_metric({"alias": "x", "acc": 0.5, "acc_stderr": 0.1}) == ("acc", 0.5)  # pre-0.4 keys
    assert choose_metric({"f1,none": 0.3, "em,none": 0.2}) == ("f1,none", 0.3)
    assert choose_metric({"acc,other": 0.1, "acc,none": 0.2}) == ("acc,none", 0.2)  # filter none first
    assert choose_metric({"alias": "x", "acc_stderr,none": 0.1}) == "no numeric metric"
    assert choose_metric({"acc,none": True}) == "no numeric metric"  # a bool is no score
    assert model_name_of({"config": {"model_args": {"pretrained": "org/m", "dtype": "auto"}}}) == "org/m"
    assert model_name_of({"config": {"model_args": "pretrained=base,peft=org/adapter"}}) == "org/adapter"
    assert model_name_of({"model_name": "", "config": {"model_args": "model=gpt-4o,base_url=x"}}) == "gpt-4o"
    assert model_name_of({"config": {"model": "hf"}}) is None


def test_several_files_become_one_table_the_kin_loader_reads(tmp_path: Path) -> None:
    a_old = write_results(tmp_path, lm_eval_results("pretrained=org/model-a", 1.0e9, arc_easy=0.1), "2025")
    a_new = write_results(tmp_path, lm_eval_results("pretrained=org/model-a", 2.0e9), "2026")
    b_data = lm_eval_results("pretrained=org/model-b", 1.5e9)
    b_data["results"]["arc_easy"]["acc_norm,none"] = 0.70
    b_data["results"]["gsm8k"] = {"alias": "gsm8k", "exact_match,strict-match": 0.05}
    del b_data["results"]["mmlu_astronomy"], b_data["group_subtasks"]["mmlu"]
    b = write_results(tmp_path, b_data, "2026")
    assert results_files([tmp_path]) == sorted([a_old, a_new, b])

    runs = [read_run(p) for p in results_files([tmp_path])]
    # A pool that serves org/model-b under its own name.
    merged = merge_runs(runs, rename={"org/model-b": "model-b"})
    # Tasks in the order they were first met, the runs taken oldest first.
    assert merged.table.columns == ("arc_easy", "gsm8k", "mmlu_astronomy", "mmlu")
    assert merged.table.scores == {
        # The newer of model-a's two runs wins every task they share (arc_easy 0.1 was the old one).
        "org/model-a": {"arc_easy": 0.5925925925925926, "gsm8k": 0.21, "mmlu_astronomy": 0.45},
        # model-b's file has no astronomy, so its mmlu row is a task of its own there.
        "model-b": {"arc_easy": 0.70, "gsm8k": 0.05, "mmlu": 0.40},
    }
    assert merged.table.counts["model-b"] == {"arc_easy": 2376, "gsm8k": 100}
    assert merged.metrics["model-b"] == {
        "arc_easy": "acc_norm,none",
        "gsm8k": "exact_match,strict-match",
        "mmlu": "acc,none",
    }
    assert len(merged.superseded) == 3 and all(str(a_new) in s for s in merged.superseded)

    out = tmp_path / "profiles.csv"
    write_table(merged.table, out)
    profiles = load_profiles(out)
    assert profiles.benchmarks == merged.table.columns
    assert profiles.imputed == {"org/model-a": ("mmlu",), "model-b": ("mmlu_astronomy",)}
    # Two models: the better one on a task is 1, the other 0; a missing cell takes the mean of the one known.
    assert profiles.vectors["model-b"] == pytest.approx((1.0, 0.0, 0.5, 0.5))
    assert profiles.vectors["org/model-a"] == pytest.approx((0.0, 1.0, 0.5, 0.5))


def test_lm_eval_errors_name_the_file(tmp_path: Path) -> None:
    not_json = tmp_path / "results_x.json"
    not_json.write_text("{")
    with pytest.raises(LmEvalError, match=f"{not_json}: not valid JSON"):
        read_run(not_json)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"scores": {}}))
    with pytest.raises(LmEvalError, match="no 'results' mapping"):
        read_run(other)
    nameless = lm_eval_results("pretrained=x", 1.0)
    del nameless["model_name"], nameless["config"]
    nameless_path = tmp_path / "results_nameless.json"
    nameless_path.write_text(json.dumps(nameless))
    with pytest.raises(LmEvalError, match="names no model.*pass --model"):
        merge_runs([read_run(nameless_path)])
    assert set(merge_runs([read_run(nameless_path)], model="mine").table.scores) == {"mine"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LmEvalError, match="no results_\\*.json"):
        results_files([empty])
    with pytest.raises(LmEvalError, match="no such file"):
        results_files([tmp_path / "absent"])


def test_the_command_reads_lm_eval_files_under_the_pools_names(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from karma.cli import app

    a_file = write_results(
        tmp_path / "runs", lm_eval_results("pretrained=org/model-a,dtype=auto", 2.0e9), "a"
    )
    b_data = lm_eval_results("pretrained=org/model-b", 2.0e9, arc_easy=0.5)
    b_data["results"]["arc_easy"]["acc_norm,none"] = 0.5
    write_results(tmp_path / "runs", b_data, "b")
    config = tmp_path / "pool.yaml"  # the pool serves org/model-a as "a"; model-b is not in it
    config.write_text("pool:\n  - {name: a, model: org/model-a}\n  - {name: other}\n")
    out = tmp_path / "profiles.csv"
    args = ["profile", "--from-lm-eval", str(tmp_path / "runs"), "--config", str(config), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == [
        "model,arc_easy,gsm8k,mmlu_astronomy",
        "a,0.5925925925925926,0.21,0.45",
        "org/model-b,0.5,0.21,0.45",
    ]
    assert (tmp_path / "profiles.counts.csv").read_text().splitlines()[1] == "a,2376,100,152"
    assert "wikitext left out" in result.output and "metrics used: acc,none, acc_norm,none" in result.output

    one = CliRunner().invoke(
        app,
        [
            "profile",
            "--from-lm-eval",
            str(a_file),
            "--model",
            "mine",
            "--metric",
            "acc",
            "--out",
            str(out),
        ],
    )
    assert one.exit_code == 0, one.output
    assert out.read_text().splitlines()[:2] == [
        "model,arc_easy,mmlu_astronomy",
        "mine,0.6561447811447811,0.45",
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    failed = CliRunner().invoke(app, ["profile", "--from-lm-eval", str(bad), "--out", str(out)])
    assert failed.exit_code == 2 and f"{bad}: no 'results' mapping" in failed.output
