"""Competency profiles and the kin rule: pure functions, no Kafka.

A model's profile is its vector of benchmark scores, each column min-max normalised over
the pool. superiority(m) is the mean of m's normalised scores (in [0, 1]); similarity(a, b)
is the cosine of two normalised vectors. a and b are kin when similarity >= tau and
|superiority(a) - superiority(b)| <= delta.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Profiles:
    """Normalised benchmark vectors of a model pool."""

    benchmarks: tuple[str, ...]
    vectors: dict[str, tuple[float, ...]]

    def superiority(self, model: str) -> float:
        vector = self.vector(model)
        return sum(vector) / len(vector)

    def vector(self, model: str) -> tuple[float, ...]:
        """A model with no profile gets the pool's mean vector: average until proven otherwise."""
        if model in self.vectors:
            return self.vectors[model]
        count = len(self.vectors)
        return tuple(sum(v[i] for v in self.vectors.values()) / count for i in range(len(self.benchmarks)))

    def similarity(self, a: str, b: str) -> float:
        return cosine(self.vector(a), self.vector(b))


def cosine(u: Sequence[float], v: Sequence[float]) -> float:
    norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    if norm == 0.0:
        # A model at the bottom of every column has no direction; call it similar only to itself.
        return 1.0 if list(u) == list(v) else 0.0
    return max(-1.0, min(1.0, sum(x * y for x, y in zip(u, v, strict=True)) / norm))


def normalise(raw: dict[str, list[float]]) -> dict[str, tuple[float, ...]]:
    """Min-max normalises each column over the pool; a constant column becomes 0.5 for all."""
    if not raw:
        raise ProfileError("no models in the profile table")
    width = len(next(iter(raw.values())))
    lows = [min(v[i] for v in raw.values()) for i in range(width)]
    highs = [max(v[i] for v in raw.values()) for i in range(width)]
    return {
        model: tuple(
            0.5 if highs[i] == lows[i] else (x - lows[i]) / (highs[i] - lows[i]) for i, x in enumerate(v)
        )
        for model, v in raw.items()
    }


def load_profiles(path: Path | None = None) -> Profiles:
    """Reads a benchmark CSV (model,bench1,bench2,...); None reads the bundled 16-model table."""
    if path is None:
        text = resources.files("karma.streams").joinpath("data/model_benchmarks.csv").read_text()
        where = "bundled model_benchmarks.csv"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ProfileError(f"cannot read profiles {path}: {exc.strerror}") from None
        where = str(path)
    rows = list(csv.reader(text.splitlines()))
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() != "model":
        raise ProfileError(f"{where}: the header must be 'model,<benchmark>,...'")
    benchmarks = tuple(h.strip() for h in rows[0][1:])
    raw: dict[str, list[float]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(benchmarks) + 1:
            raise ProfileError(f"{where}:{line_no}: expected {len(benchmarks) + 1} cells, got {len(row)}")
        try:
            raw[row[0].strip()] = [float(cell) for cell in row[1:]]
        except ValueError:
            raise ProfileError(f"{where}:{line_no}: scores must be numbers: {row[1:]}") from None
    return Profiles(benchmarks=benchmarks, vectors=normalise(raw))


@dataclass(frozen=True)
class KinRule:
    tau: float
    delta: float

    def is_kin(self, similarity: float, gap: float) -> bool:
        return similarity >= self.tau and gap <= self.delta


@dataclass(frozen=True)
class Scored:
    """A response id with its model's superiority: what pair selection needs to know."""

    response_id: str
    model: str
    superiority: float


@dataclass(frozen=True)
class ChosenPair:
    a: Scored
    b: Scored
    similarity: float
    gap: float


def kin_pairs(candidates: Sequence[Scored], profiles: Profiles, rule: KinRule) -> list[ChosenPair]:
    """Neighbours by superiority that are kin: O(k log k) for k responses, never all pairs.

    Sorting puts the closest-in-competency responses side by side, so checking only adjacent
    ones finds each response's nearest kin without comparing every pair.
    """
    ordered = sorted(candidates, key=lambda c: (c.superiority, c.response_id))
    chosen: list[ChosenPair] = []
    for low, high in zip(ordered, ordered[1:], strict=False):
        if low.model == high.model:
            continue
        gap = abs(high.superiority - low.superiority)
        similarity = profiles.similarity(low.model, high.model)
        if rule.is_kin(similarity, gap):
            chosen.append(ChosenPair(a=low, b=high, similarity=similarity, gap=gap))
    return chosen
