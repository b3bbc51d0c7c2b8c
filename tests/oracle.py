"""The tests' own statement of the kin rule, written from the README (not from agents/kinship.py),
so that a bug in the pipeline's kinship code cannot also be in what the tests expect of it.

The rule, as the README states it:

- each model's benchmark vector is min-max normalised per column over the table's models
  (the pool of the table: the bundled one is UltraFeedback's 16 models); a missing score takes
  the column's mean normalised score; a model with no row gets the mean of the table's vectors;
- superiority = the mean of a model's normalised scores; similarity = the cosine of two vectors;
- two models are kin when similarity >= tau and |superiority gap| <= delta; two responses are
  kin when their models are and the shorter (in words) is at least min_length_ratio of the longer;
- a prompt's responses are sorted by superiority and only neighbours are paired, when kin.

Deliberately plain: lists of floats, one loop per step, no import of karma.agents. Only the ids
(karma.schemas) are shared with the pipeline, since the tests compare ids.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from karma.schemas.models import pair_id_for, response_id_for

BUNDLED_TABLE = Path(__file__).resolve().parents[1] / "agents" / "data" / "model_benchmarks.csv"
MISSING_CELLS = ("", "na", "n/a", "nan", "null", "none", "-")


@dataclass(frozen=True)
class Table:
    """The normalised benchmark vectors of a profile table."""

    vectors: dict[str, list[float]]

    def vector(self, model: str) -> list[float]:
        if model in self.vectors:
            return self.vectors[model]
        # No row: the mean of the table's vectors ("average until proven otherwise").
        rows = list(self.vectors.values())
        return [sum(row[i] for row in rows) / len(rows) for i in range(len(rows[0]))]

    def superiority(self, model: str) -> float:
        vector = self.vector(model)
        return sum(vector) / len(vector)

    def similarity(self, a: str, b: str) -> float:
        u, v = self.vector(a), self.vector(b)
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        norms = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
        if norms == 0.0:
            # A vector of zeros has no direction: the README does not say; such a model is then
            # similar to nothing but its own vector. No row of the bundled table is all zeros.
            return 1.0 if u == v else 0.0
        return dot / norms


def read_table(path: Path | None = None) -> Table:
    """A profile CSV (`model,<benchmark>,...`), by default the bundled table."""
    with (path or BUNDLED_TABLE).open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    header, body = rows[0], rows[1:]
    assert header[0].strip() == "model", f"{path}: not a profile table"
    raw = {
        row[0].strip(): [None if c.strip().lower() in MISSING_CELLS else float(c) for c in row[1:]]
        for row in body
    }
    columns: list[dict[str, float]] = []
    for i in range(len(header) - 1):
        present = {m: scores[i] for m, scores in raw.items() if scores[i] is not None}
        low, high = min(present.values()), max(present.values())
        # The README does not say what a constant column becomes; no test table has one.
        assert high > low, f"benchmark {header[i + 1]} is constant: min-max normalisation is undefined"
        scaled = {m: (x - low) / (high - low) for m, x in present.items()}
        mean = sum(scaled.values()) / len(scaled)
        columns.append({m: scaled.get(m, mean) for m in raw})
    return Table({m: [column[m] for column in columns] for m in raw})


@dataclass(frozen=True)
class KinPairOf:
    """One expected pair: the lower and the higher model by superiority."""

    low: str
    high: str


def kin_model_pairs(
    models: Iterable[str],
    *,
    tau: float,
    delta: float,
    min_length_ratio: float = 0.0,
    table: Table | None = None,
    superiority: Mapping[str, float] | None = None,
    lengths: Mapping[str, int] | None = None,
    prompt_id: str = "",
) -> list[KinPairOf]:
    """The kin pairs among one prompt's responses: each model with its nearest kin above it in
    superiority, if any (kin: similar, within delta, comparable lengths). `superiority` overrides the
    table's (the online estimate a worker reports); `lengths` are the answers' words (unknown:
    the length gate passes). Responses of equal superiority are ordered by response id, as the
    pipeline orders them, so the prompt id matters only for those ties."""
    table = table or read_table()
    superiority = {m: (superiority or {}).get(m, table.superiority(m)) for m in models}
    ordered = sorted(superiority, key=lambda m: (superiority[m], response_id_for(prompt_id, m)))

    def kin(low: str, high: str) -> bool:
        similar = table.similarity(low, high) >= tau
        close = abs(superiority[high] - superiority[low]) <= delta
        comparable = True
        if lengths is not None and low in lengths and high in lengths:
            longer = max(lengths[low], lengths[high])
            comparable = longer == 0 or min(lengths[low], lengths[high]) / longer >= min_length_ratio
        return similar and close and comparable

    # Each model with the first model above it (in that order) that is its kin, if any.
    pairs = []
    for position, low in enumerate(ordered):
        above = [high for high in ordered[position + 1 :] if kin(low, high)]
        if above:
            pairs.append(KinPairOf(low, above[0]))
    return pairs


def expected_pair_ids(
    prompt_id: str,
    models: Iterable[str],
    *,
    tau: float,
    delta: float,
    min_length_ratio: float = 0.0,
    table: Table | None = None,
    superiority: Mapping[str, float] | None = None,
    lengths: Mapping[str, int] | None = None,
) -> set[str]:
    """The pair ids (= preference ids) the kin rule yields for one prompt answered by `models`."""
    pairs = kin_model_pairs(
        models,
        tau=tau,
        delta=delta,
        min_length_ratio=min_length_ratio,
        table=table,
        superiority=superiority,
        lengths=lengths,
        prompt_id=prompt_id,
    )
    return {
        pair_id_for(prompt_id, response_id_for(prompt_id, p.low), response_id_for(prompt_id, p.high))
        for p in pairs
    }
