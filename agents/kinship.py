"""Competency profiles and the kin rule: pure functions, no Kafka.

A model's profile is its vector of benchmark scores, each column min-max normalised over
the models of the profile table (not only those of the configured pool). superiority(m) is
the mean of m's normalised scores (in [0, 1]); similarity(a, b) is the cosine of two
normalised vectors. a and b are kin when similarity >= tau,
|superiority(a) - superiority(b)| <= delta, and (when both lengths are known) the shorter
response is at least `min_length_ratio` of the longer one: responses of very different
complexity teach a trainer as little as models of very different competency.

Missing benchmark scores (an empty cell, or `NA`) are handled explicitly: a column is
normalised over the models that have a score, and a missing cell then takes the column's
mean normalised score, i.e. "average on that benchmark until measured". `Profiles.imputed`
lists every cell filled that way.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Profiles:
    """Normalised benchmark vectors of a model pool."""

    benchmarks: tuple[str, ...]
    vectors: dict[str, tuple[float, ...]]
    imputed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> benchmarks

    def superiority(self, model: str) -> float:
        vector = self.vector(model)
        return sum(vector) / len(vector)

    def vector(self, model: str) -> tuple[float, ...]:
        """A model with no profile gets the mean vector of the table's models: average until
        proven otherwise."""
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


def normalise(raw: Mapping[str, Sequence[float | None]]) -> dict[str, tuple[float, ...]]:
    """Min-max normalises each column over the table's models (a constant column becomes 0.5 for all);
    a missing score (None) becomes the column's mean normalised score."""
    if not raw:
        raise ProfileError("no models in the profile table")
    width = len(next(iter(raw.values())))
    columns = []
    for i in range(width):
        present = [v[i] for v in raw.values() if v[i] is not None]
        if not present:
            raise ProfileError(f"benchmark column {i + 1} has no score for any model")
        low, high = min(present), max(present)
        scaled = {
            m: None if v[i] is None else 0.5 if high == low else (v[i] - low) / (high - low)
            for m, v in raw.items()
        }
        known = [x for x in scaled.values() if x is not None]
        mean = sum(known) / len(known)
        columns.append({m: mean if x is None else x for m, x in scaled.items()})
    return {model: tuple(column[model] for column in columns) for model in raw}


MISSING = {"", "na", "n/a", "nan", "null", "none", "-"}


def _score(cell: str, where: str) -> float | None:
    text = cell.strip()
    if text.lower() in MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ProfileError(
            f"{where}: score {cell!r} is not a number (leave the cell empty if unknown)"
        ) from None
    if not math.isfinite(value):
        raise ProfileError(f"{where}: score {cell!r} is not finite")
    return value


def load_profiles(path: Path | None = None) -> Profiles:
    """Reads benchmark profiles: a CSV (model,bench1,bench2,...) or a YAML mapping
    {model: {benchmark: score}}; None reads the bundled 16-model table."""
    if path is None:
        text = resources.files("karma.agents").joinpath("data/model_benchmarks.csv").read_text()
        where = "bundled model_benchmarks.csv"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ProfileError(f"cannot read profiles {path}: {exc.strerror}") from None
        where = str(path)
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            return _profiles(*_read_yaml(text, where))
    return _profiles(*_read_csv(text, where))


def _read_csv(text: str, where: str) -> tuple[tuple[str, ...], dict[str, list[float | None]]]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or len(rows[0]) < 2 or rows[0][0].strip().lower() != "model":
        raise ProfileError(f"{where}: the header must be 'model,<benchmark>,...'")
    benchmarks = tuple(h.strip() for h in rows[0][1:])
    raw: dict[str, list[float | None]] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(benchmarks) + 1:
            raise ProfileError(f"{where}:{line_no}: expected {len(benchmarks) + 1} cells, got {len(row)}")
        model = row[0].strip()
        if model in raw:
            raise ProfileError(f"{where}:{line_no}: model {model!r} appears twice")
        raw[model] = [_score(cell, f"{where}:{line_no}") for cell in row[1:]]
    return benchmarks, raw


def _read_yaml(text: str, where: str) -> tuple[tuple[str, ...], dict[str, list[float | None]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ProfileError(f"{where}: expected a mapping of model -> {{benchmark: score}}")
    benchmarks = tuple(dict.fromkeys(str(b) for scores in data.values() for b in scores))
    raw = {
        str(model): [
            _score("" if scores.get(b) is None else str(scores[b]), f"{where}: {model}.{b}")
            for b in benchmarks
        ]
        for model, scores in data.items()
    }
    return benchmarks, raw


def _profiles(benchmarks: tuple[str, ...], raw: dict[str, list[float | None]]) -> Profiles:
    imputed = {
        model: tuple(b for b, x in zip(benchmarks, scores, strict=True) if x is None)
        for model, scores in raw.items()
        if any(x is None for x in scores)
    }
    return Profiles(benchmarks=benchmarks, vectors=normalise(raw), imputed=imputed)


@dataclass(frozen=True)
class KinRule:
    tau: float
    delta: float
    min_length_ratio: float = 0.0

    def is_kin(self, similarity: float, gap: float, length_ratio: float = 1.0) -> bool:
        return similarity >= self.tau and gap <= self.delta and length_ratio >= self.min_length_ratio


@dataclass(frozen=True)
class Scored:
    """A response id with its model's superiority: what pair selection needs to know."""

    response_id: str
    model: str
    superiority: float
    length: int | None = None  # tokens (or words), for the complexity gate


def length_ratio(a: Scored, b: Scored) -> float:
    """Shorter over longer length; 1.0 when either is unknown."""
    if a.length is None or b.length is None:
        return 1.0
    longer = max(a.length, b.length)
    return 1.0 if longer == 0 else min(a.length, b.length) / longer


@dataclass(frozen=True)
class ChosenPair:
    a: Scored
    b: Scored
    similarity: float
    gap: float


def kin_pairs(candidates: Sequence[Scored], profiles: Profiles, rule: KinRule) -> list[ChosenPair]:
    """Each response with its nearest kin above it in superiority, if it has one: at most k - 1
    pairs for k responses, never all pairs.

    Sorted by superiority, a response's candidates are those after it up to `delta` above it (the
    scan stops there: every later one is farther), and the first that is kin is its nearest. Not
    only the next one: a model of another shape can sit between two kin (the lab's lab-arith,
    between lab-generalist-m2 and -m), and checking neighbours alone paired nothing there.
    O(k log k + k w) for w responses within `delta` of one another.
    """
    ordered = sorted(candidates, key=lambda c: (c.superiority, c.response_id))
    chosen: list[ChosenPair] = []
    for i, low in enumerate(ordered):
        for high in ordered[i + 1 :]:
            gap = abs(high.superiority - low.superiority)
            if gap > rule.delta:
                break
            if high.model == low.model:
                continue
            similarity = profiles.similarity(low.model, high.model)
            if rule.is_kin(similarity, gap, length_ratio(low, high)):
                chosen.append(ChosenPair(a=low, b=high, similarity=similarity, gap=gap))
                break
    return chosen


def kin_report(profiles: Profiles, rule: KinRule) -> dict[str, Any]:
    """Every model's superiority and, for each unordered pair of models, its similarity, gap
    and whether it is kin under `rule` (lengths are per response, so not part of this)."""
    models = sorted(profiles.vectors)
    pairs = []
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            similarity = profiles.similarity(a, b)
            gap = abs(profiles.superiority(a) - profiles.superiority(b))
            pairs.append(
                {"a": a, "b": b, "similarity": similarity, "gap": gap, "kin": rule.is_kin(similarity, gap)}
            )
    return {"superiority": {m: profiles.superiority(m) for m in models}, "pairs": pairs}
