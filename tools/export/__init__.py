"""`karma export`: the preferences topic as TRL-ready shards (JSONL or Parquet), exactly once
across crashes.

- rows.py: what a preference becomes (`row_of`, `COLUMNS`) and which are left out (`RowFilter`,
  `Skip`: ties, other policies, low confidence, undecodable messages); no Kafka, no files.
- shards.py: the shard folder (`ShardStore`): shards and per-shard manifests made durable
  together, crash recovery, the resume offsets; `ShardBuilder` turns messages into shards. No Kafka.
- runner.py: the Kafka loop (`run_export`).
"""

from __future__ import annotations

from karma.tools.export.rows import COLUMNS, RowFilter, Skip, row_of
from karma.tools.export.runner import ExportOptions, ExportResult, run_export
from karma.tools.export.shards import ExportError, Layout, Manifest, ShardBuilder, ShardFormat, ShardStore

__all__ = [
    "COLUMNS",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "Layout",
    "Manifest",
    "RowFilter",
    "ShardBuilder",
    "ShardFormat",
    "ShardStore",
    "Skip",
    "row_of",
    "run_export",
]
