"""Profiles and the kin rule, checked against independent arithmetic on the shared table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from hypothesis import given
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

BUNDLED_TABLE = Path(__file__).resolve().parents[2] / "streams" / "data" / "model_benchmarks.csv"
# The shared reference data sits beside the repository (../shared), in CI too.
SHARED_TABLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "model_benchmarks.csv"


def test_bundled_table_is_the_shared_reference_table() -> None:
    assert BUNDLED_TABLE.read_text() == SHARED_TABLE.read_text()


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
    with pytest.raises(ProfileError, match=r"p.csv:2: scores must be numbers"):
        load_profiles(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "missing.csv")


def test_kin_rule_needs_both_similarity_and_small_gap() -> None:
    rule = KinRule(tau=0.9, delta=0.1)
    assert rule.is_kin(0.95, 0.05)
    assert not rule.is_kin(0.85, 0.05)
    assert not rule.is_kin(0.95, 0.2)


def test_kin_pairs_are_adjacent_kin_in_the_default_pool() -> None:
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


vectors = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    st.lists(st.floats(0, 100, allow_nan=False), min_size=3, max_size=3),
    min_size=2,
    max_size=8,
)


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


@given(vectors, st.floats(0.01, 1000))
def test_rescaling_a_column_changes_nothing(raw: dict[str, list[float]], factor: float) -> None:
    scaled = {m: [v[0] * factor, v[1], v[2]] for m, v in raw.items()}
    a, b = normalise(raw), normalise(scaled)
    for m in raw:
        assert a[m] == pytest.approx(b[m], abs=1e-9)


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
