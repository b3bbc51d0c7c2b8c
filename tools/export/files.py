"""The files of a `karma export` shard: their format and the `Layout` every shard of a folder
shares, the Parquet schema (pyarrow imported at the point of use: an optional extra), writing a
shard's rows durably (fsync, and fsync of the folder after a rename), and the size and SHA-256
that let a crash's leftovers be checked.

Separate from the shard folder (shards.py), which decides when and where these are written and
how a crash is recovered from. No Kafka here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from karma.tools.export.rows import COLUMNS, Row, RowFilter

__all__ = [
    "EXPORT_EXTRA_HINT",
    "ExportError",
    "Layout",
    "ShardFormat",
    "arrow_schema",
    "file_digest",
    "fsync_dir",
    "fsynced",
    "load_pyarrow",
    "shard_name",
    "write_rows",
]

EXPORT_EXTRA_HINT = "pip install 'karma-stream[export]'"


class ExportError(RuntimeError):
    """A shard folder that cannot be exported to; the message says why and what to do."""


class ShardFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"


@dataclass(frozen=True)
class Layout:
    """What every shard of one folder shares: a trainer globbing the folder gets one schema and
    one selection of preferences, so a run with other settings must use another folder."""

    format: ShardFormat
    messages: bool = False
    row_filter: RowFilter = field(default_factory=RowFilter)

    def describe(self) -> dict[str, Any]:
        return {"format": self.format.value, "messages": self.messages, **self.row_filter.describe()}


def shard_name(seq: int, fmt: ShardFormat) -> str:
    return f"shard-{seq:06d}.{fmt.value}"


def load_pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported at the point of use: only Parquet shards need them,
    and they are an optional extra."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ExportError(f"--format parquet needs pyarrow: {EXPORT_EXTRA_HINT} ({exc})") from None
    return pyarrow, pyarrow.parquet


def arrow_schema(pa: Any, messages: bool) -> Any:
    """The Parquet schema of a row: explicit, so that every shard has the same one (a shard whose
    soft labels are all null would otherwise get a null-typed column, and fail to load with the
    others)."""
    text = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])) if messages else pa.string()
    types = {
        "prompt": text,
        "chosen": text,
        "rejected": text,
        "soft_label": pa.float64(),
        "gap": pa.float64(),
        "confidence": pa.float64(),
        "chosen_model": pa.string(),
        "rejected_model": pa.string(),
        "judge": pa.string(),
        "policy": pa.string(),
        "simulated": pa.bool_(),
        "preference_id": pa.string(),
        "pair_id": pa.string(),
        "prompt_id": pa.string(),
        "chosen_score": pa.float64(),
        "rejected_score": pa.float64(),
    }
    nullable = {"soft_label", "chosen_score", "rejected_score"}
    return pa.schema([pa.field(name, types[name], nullable=name in nullable) for name in COLUMNS])


def fsynced(file: IO[Any]) -> None:
    file.flush()
    os.fsync(file.fileno())


def fsync_dir(folder: Path) -> None:
    """Makes the renames in `folder` durable (a rename is an entry of the folder's)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rows(path: Path, rows: list[Row], layout: Layout) -> None:
    """Writes and fsyncs one shard's rows."""
    if layout.format == ShardFormat.PARQUET:
        pa, pq = load_pyarrow()
        table = pa.Table.from_pylist(rows, schema=arrow_schema(pa, layout.messages))
        with path.open("wb") as file:
            pq.write_table(table, file)
            fsynced(file)
    else:
        with path.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            fsynced(file)


def file_digest(path: Path) -> tuple[int, str]:
    """A shard file's size and SHA-256, as its manifest records them."""
    sha = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            sha.update(chunk)
    return path.stat().st_size, sha.hexdigest()
