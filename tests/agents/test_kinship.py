"""Profiles and the kin rule, checked against independent arithmetic on the bundled table."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from karma.agents.kinship import (
    KinRule,
    ProfileError,
    Profiles,
    Scored,
    cosine,
    kin_pairs,
    load_profiles,
    normalise,
)

BUNDLED_TABLE = Path(__file__).resolve().parents[2] / "agents" / "data" / "model_benchmarks.csv"
# The table as published by the ZEBRA authors (provenance: agents/data/model_benchmarks.md).
PUBLISHED_SHA256 = "e7715c67bd33f1bdfc2c59dc02c6e13b508778cd6ea2d978ea56640a548ce745"


def test_bundled_table_is_the_published_table() -> None:
    assert hashlib.sha256(BUNDLED_TABLE.read_bytes()).hexdigest() == PUBLISHED_SHA256
    rows = list(csv.DictReader(BUNDLED_TABLE.open()))
    assert len(rows) == 16
    assert list(rows[0]) == ["model", "ifeval", "mmlu", "mmlu_pro", "hellaswag", "arc_easy", "arc_challenge"]
    assert rows[0]["model"] == "gpt-4" and rows[0]["mmlu"] == "86.40"


def test_superiority_and_similarity_follow_the_definitions() -> None:
    rows = list(csv.DictReader(BUNDLED_TABLE.open()))
    columns = [c for c in rows[0] if c != "model"]
    lo = {c: min(float(r[c]) for r in rows) for c in columns}
    hi = {c: max(float(r[c]) for r in rows) for c in columns}
    norm = {r["model"]: [(float(r[c]) - lo[c]) / (hi[c] - lo[c]) for c in columns] for r in rows}
    profiles = load_profiles(BUNDLED_TABLE)
    for model, vector in norm.items():
        assert profiles.superiority(model) == pytest.approx(sum(vector) / len(vector))
    a, b = norm["gpt-4"], norm["llama-2-7b-chat"]
    expected = sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))
    assert profiles.similarity("gpt-4", "llama-2-7b-chat") == pytest.approx(expected)
    assert profiles.superiority("gpt-4") > profiles.superiority("pythia-12b")


def test_unknown_model_starts_at_the_pool_mean() -> None:
    profiles = load_profiles()
    mean = sum(profiles.superiority(m) for m in profiles.vectors) / len(profiles.vectors)
    assert profiles.superiority("brand-new-model") == pytest.approx(mean)


def test_bad_profile_files_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.csv"
    bad.write_text("model,a,b\nx,1,2\ny,1\n")
    with pytest.raises(ProfileError, match=r"p.csv:3: expected 3 cells"):
        load_profiles(bad)
    bad.write_text("model,a\nx,high\n")
    with pytest.raises(ProfileError, match=r"p.csv:2: score 'high' is not a number"):
        load_profiles(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "missing.csv")


def test_kin_rule_needs_both_similarity_and_small_gap() -> None:
    rule = KinRule(tau=0.9, delta=0.1)
    assert rule.is_kin(0.95, 0.05)
    assert not rule.is_kin(0.85, 0.05)
    assert not rule.is_kin(0.95, 0.2)


def test_kin_pairs_in_the_default_pool() -> None:
    profiles = load_profiles()
    pool = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
    scored = [Scored(f"r-{m}", m, profiles.superiority(m)) for m in pool]
    pairs = kin_pairs(scored, profiles, KinRule(tau=0.95, delta=0.15))
    assert {(p.a.model, p.b.model) for p in pairs} == {
        ("llama-2-13b-chat", "wizardlm-13b"),
        ("wizardlm-13b", "vicuna-33b"),
    }
    for p in pairs:
        assert p.similarity >= 0.95 and p.gap <= 0.15
    # gpt-3.5-turbo is far above the rest: it is nobody's kin at delta 0.15.
    assert all("gpt-3.5-turbo" not in (p.a.model, p.b.model) for p in pairs)


def test_a_model_of_another_shape_between_two_kin_does_not_hide_them() -> None:
    # The lab's case: lab-arith sits between lab-generalist-m2 and -m in superiority without
    # being kin to either (its profile has another shape); m2 and m are kin all the same.
    profiles = Profiles(
        benchmarks=("arith", "strings"),
        vectors={"m2": (0.62, 0.63), "arith": (0.95, 0.32), "m": (0.67, 0.68)},
    )
    assert profiles.superiority("m2") < profiles.superiority("arith") < profiles.superiority("m")
    assert profiles.similarity("arith", "m2") < 0.95 and profiles.similarity("arith", "m") < 0.95
    scored = [Scored(f"r-{m}", m, profiles.superiority(m)) for m in ("m2", "arith", "m")]
    pairs = kin_pairs(scored, profiles, KinRule(tau=0.95, delta=0.15))
    assert [(p.a.model, p.b.model) for p in pairs] == [("m2", "m")]


def test_each_response_is_paired_with_its_nearest_kin_above_only() -> None:
    # a, b and c all kin: a goes with b (its nearest), not also with c; b goes with c
    profiles = Profiles(benchmarks=("x",), vectors={"a": (0.50,), "b": (0.55,), "c": (0.60,)})
    scored = [Scored(f"r-{m}", m, profiles.superiority(m)) for m in "abc"]
    pairs = kin_pairs(scored, profiles, KinRule(tau=0.95, delta=0.15))
    assert [(p.a.model, p.b.model) for p in pairs] == [("a", "b"), ("b", "c")]


vectors = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    st.lists(st.floats(0, 100, allow_nan=False), min_size=3, max_size=3),
    min_size=2,
    max_size=8,
)


@settings(deadline=None)
@given(vectors)
def test_superiority_in_unit_interval_and_similarity_symmetric(raw: dict[str, list[float]]) -> None:
    profiles = Profiles(benchmarks=("x", "y", "z"), vectors=normalise(raw))
    names = list(raw)
    for a in names:
        assert 0.0 <= profiles.superiority(a) <= 1.0
        for b in names:
            s = profiles.similarity(a, b)
            assert -1.0 <= s <= 1.0
            assert s == pytest.approx(profiles.similarity(b, a))


@settings(deadline=None)
@given(vectors, st.floats(0.01, 1000))
def test_rescaling_a_column_changes_nothing(raw: dict[str, list[float]], factor: float) -> None:
    scaled = {m: [v[0] * factor, v[1], v[2]] for m, v in raw.items()}
    a, b = normalise(raw), normalise(scaled)
    for m in raw:
        assert a[m] == pytest.approx(b[m], abs=1e-9)


@settings(deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=30))
def test_selected_pairs_are_two_distinct_responses(sups: list[float]) -> None:
    profiles = Profiles(benchmarks=("x",), vectors={f"m{i}": (s,) for i, s in enumerate(sups)})
    scored = [Scored(f"r{i}", f"m{i}", s) for i, s in enumerate(sups)]
    for pair in kin_pairs(scored, profiles, KinRule(tau=-1.0, delta=1.0)):
        assert pair.a.response_id != pair.b.response_id
        assert pair.a.superiority <= pair.b.superiority


def test_cosine_of_zero_vectors() -> None:
    assert cosine([0, 0], [0, 0]) == 1.0
    assert cosine([0, 0], [1, 0]) == 0.0


def test_missing_cells_take_the_column_mean_and_are_listed(tmp_path: Path) -> None:
    table = tmp_path / "p.csv"
    table.write_text("model,a,b\nx,0,10\ny,10,NA\nz,5,30\n")
    profiles = load_profiles(table)
    # Column b over x and z: x -> 0, z -> 1; y is missing and takes their mean, 0.5.
    assert profiles.vectors["y"] == pytest.approx((1.0, 0.5))
    assert profiles.imputed == {"y": ("b",)}
    table.write_text("model,a,b\nx,0,\ny,10,\n")
    with pytest.raises(ProfileError, match="column 2 has no score"):
        load_profiles(table)


def test_yaml_profiles_match_the_csv_form(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("model,a,b\nx,0,10\ny,10,\nz,5,30\n")
    (tmp_path / "p.yaml").write_text("x: {a: 0, b: 10}\ny: {a: 10}\nz: {a: 5, b: 30}\n")
    from_csv, from_yaml = load_profiles(tmp_path / "p.csv"), load_profiles(tmp_path / "p.yaml")
    assert from_yaml.benchmarks == from_csv.benchmarks
    assert from_yaml.vectors.keys() == from_csv.vectors.keys()
    for model, vector in from_csv.vectors.items():
        assert from_yaml.vectors[model] == pytest.approx(vector)
    assert from_yaml.imputed == from_csv.imputed == {"y": ("b",)}
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ProfileError, match="bad.yaml: expected a mapping"):
        load_profiles(tmp_path / "bad.yaml")


def test_a_model_twice_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("model,a\nx,1\nx,2\n")
    with pytest.raises(ProfileError, match=r"p.csv:3: model 'x' appears twice"):
        load_profiles(tmp_path / "p.csv")


with_gaps = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    # Scores with 3 decimals, as benchmark tables have: no 1e-300 values that vanish in a shift.
    st.lists(st.one_of(st.none(), st.floats(0, 100).map(lambda x: round(x, 3))), min_size=3, max_size=3),
    min_size=2,
    max_size=8,
).filter(lambda raw: all(any(v[i] is not None for v in raw.values()) for i in range(3)))


@settings(deadline=None)
@given(with_gaps, st.floats(0.01, 1000), st.floats(-50, 50))
def test_results_invariant_to_an_affine_rescale_of_a_column_even_with_gaps(
    raw: dict[str, list[float | None]], factor: float, shift: float
) -> None:
    scaled = {m: [None if v[0] is None else v[0] * factor + shift, v[1], v[2]] for m, v in raw.items()}
    a = Profiles(benchmarks=("x", "y", "z"), vectors=normalise(raw))
    b = Profiles(benchmarks=("x", "y", "z"), vectors=normalise(scaled))
    for m in raw:
        assert a.superiority(m) == pytest.approx(b.superiority(m), abs=1e-9)
        assert 0.0 <= a.superiority(m) <= 1.0
        for n in raw:
            assert a.similarity(m, n) == pytest.approx(b.similarity(m, n), abs=1e-9)
