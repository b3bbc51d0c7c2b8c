"""The profile table `karma kin --profiles` reads (agents/kinship.py `load_profiles`), and its
counts beside it. Pure: files only, no Kafka, no model.

- `<out>` (a CSV): `model,<skill or task>,...`, one row per model, each cell the model's score in
  [0, 1] (accuracy, or the lm-evaluation-harness metric), empty where the model has none (the kin
  loader then uses the column's mean). The loader min-max normalises each column over the table's
  models, so the scale of a column does not matter; accuracy is written as measured.
- `<out stem>.counts<suffix>` (e.g. `profiles.counts.csv`): the same shape, each cell the number
  of prompts (samples) behind the score. A separate file, so the kin loader, which would read any
  extra column as a benchmark, reads the scores alone.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class TableError(ValueError):
    """A profile table that cannot be written as asked."""


@dataclass(frozen=True)
class ProfileTable:
    """Scores and counts, model x column; a model may lack a column (an empty cell)."""

    columns: tuple[str, ...]
    scores: dict[str, dict[str, float]]  # model -> column -> score
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> column -> n

    def __post_init__(self) -> None:
        for model, row in self.scores.items():
            for column, value in row.items():
                if column not in self.columns:
                    raise TableError(f"model {model}: column {column!r} is not in the table")
                if not math.isfinite(value):
                    raise TableError(f"model {model}: score {value!r} for {column} is not finite")


def counts_path(out: Path) -> Path:
    """Where the counts of the table at `out` go: `profiles.csv` -> `profiles.counts.csv`."""
    return out.with_name(f"{out.stem}.counts{out.suffix or '.csv'}")


def check_out(out: Path) -> None:
    """The table is a CSV: a .yaml name would make the kin loader read it as YAML."""
    if out.suffix.lower() in (".yaml", ".yml"):
        raise TableError(f"{out}: the profile table is written as CSV; give a .csv name")


def render(columns: tuple[str, ...], rows: Mapping[str, Mapping[str, float | int]]) -> str:
    """The CSV text: header `model,<columns>`, then one row per model, empty for a missing cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", *columns])
    for model, row in rows.items():
        writer.writerow([model, *(str(row[c]) if c in row else "" for c in columns)])
    return buffer.getvalue()


def write_table(table: ProfileTable, out: Path) -> tuple[Path, Path]:
    """Writes the scores to `out` and the counts beside it; returns both paths."""
    check_out(out)
    if not table.scores:
        raise TableError("no model to write")
    if not table.columns:
        raise TableError("no score to write: every task was left out (see above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = counts_path(out)
    # Full precision (str of a float is its shortest exact repr): rounding is for the screen only.
    _write_atomically(out, render(table.columns, table.scores))
    _write_atomically(counts, render(table.columns, table.counts))
    return out, counts


def _write_atomically(path: Path, text: str) -> None:
    # A table half written (a full disk, Ctrl-C) must not be read by a worker as a smaller pool.
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
