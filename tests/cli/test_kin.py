"""`karma kin` prints numbers that follow the definitions, recomputed here independently."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from karma.cli import app

# The table bundled with the package (its provenance: agents/data/model_benchmarks.md).
TABLE = Path(__file__).resolve().parents[2] / "agents" / "data" / "model_benchmarks.csv"


def independent_profiles(path: Path) -> dict[str, list[float]]:
    rows = list(csv.DictReader(path.open()))
    columns = [c for c in rows[0] if c != "model"]
    values = {c: [float(r[c]) for r in rows] for c in columns}
    return {
        r["model"]: [(float(r[c]) - min(values[c])) / (max(values[c]) - min(values[c])) for c in columns]
        for r in rows
    }


def test_kin_json_on_the_bundled_table_follows_the_definitions() -> None:
    result = CliRunner().invoke(
        app, ["kin", "--profiles", str(TABLE), "--tau", "0.9", "--delta", "0.2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"superiority", "pairs"}

    vectors = independent_profiles(TABLE)
    superiority = {m: sum(v) / len(v) for m, v in vectors.items()}
    assert report["superiority"] == pytest.approx(superiority)

    assert len(report["pairs"]) == math.comb(len(vectors), 2) == 120
    by_pair = {frozenset((p["a"], p["b"])): p for p in report["pairs"]}
    for a, b in itertools.combinations(vectors, 2):
        pair = by_pair[frozenset((a, b))]
        u, v = vectors[a], vectors[b]
        similarity = sum(x * y for x, y in zip(u, v, strict=True)) / (math.hypot(*u) * math.hypot(*v))
        gap = abs(superiority[a] - superiority[b])
        assert pair["similarity"] == pytest.approx(similarity)
        assert pair["gap"] == pytest.approx(gap)
        assert pair["kin"] == (similarity >= 0.9 and gap <= 0.2)


def test_kin_table_and_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["kin", "--profiles", str(TABLE)])
    assert result.exit_code == 0, result.output
    vectors = independent_profiles(TABLE)
    sup = {m: sum(v) / len(v) for m, v in vectors.items()}
    kin = sum(
        sum(x * y for x, y in zip(vectors[a], vectors[b], strict=True))
        / (math.hypot(*vectors[a]) * math.hypot(*vectors[b]))
        >= 0.95
        and abs(sup[a] - sup[b]) <= 0.15
        for a, b in itertools.combinations(vectors, 2)
    )
    assert f"{kin} of 120 model pairs are kin" in result.stdout  # default tau 0.95, delta 0.15
    (tmp_path / "bad.csv").write_text("model,a\nx,lots\n")
    result = CliRunner().invoke(app, ["kin", "--profiles", str(tmp_path / "bad.csv")])
    assert result.exit_code == 2
    assert "bad.csv:2: score 'lots' is not a number" in result.output
