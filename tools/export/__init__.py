"""`karma export`: the preferences topic as TRL-ready shards (JSONL or Parquet), exactly once
across crashes.

- rows.py: what a preference becomes (`row_of`, `COLUMNS`) and which are left out (`RowFilter`,
  `Skip`: ties, other policies, low confidence, undecodable messages); no Kafka, no files.
- manifest.py: what each committed shard covers (`Manifest`), the resume offsets and the gaps.
- files.py: a shard file's format and the folder's `Layout`, the Parquet schema, durable writes.
- shards.py: the shard folder (`ShardStore`): shards and per-shard manifests made durable
  together, crash recovery; `ShardBuilder` turns messages into shards. No Kafka in these four.
- runner.py: the Kafka loop (`run_export`).
"""

from __future__ import annotations

from karma.tools.export.files import ExportError, Layout, ShardFormat
from karma.tools.export.manifest import Manifest
from karma.tools.export.rows import COLUMNS, RowFilter, Skip, row_of
from karma.tools.export.runner import ExportOptions, ExportResult, run_export
from karma.tools.export.shards import ShardBuilder, ShardStore

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
