"""The manifests of a `karma export` shard folder: what each committed shard covers (per
partition, offsets [start, end)), its rows, what was skipped and why; and what they say
together: where to resume reading (`resume_offsets`), and offsets no shard or two shards cover
(`offset_gaps`).

Separate from the folder's writing (shards.py) because the manifests are the record of what was
exported, read on their own by tests and training-side tools. No Kafka, no pyarrow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MANIFEST_DIR", "MANIFEST_VERSION", "Manifest", "offset_gaps", "resume_offsets"]

MANIFEST_DIR = ".manifests"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """One committed shard: the offsets it covers per partition, [start, end), whether or not
    each message became a row; its rows; what was skipped and why."""

    seq: int
    topic: str
    layout: dict[str, Any]
    offsets: dict[int, tuple[int, int]]
    shard: str | None = None  # None: offsets covered, no rows (every message skipped)
    rows: int = 0
    size: int = 0
    sha256: str | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    undecodable: list[dict[str, Any]] = field(default_factory=list)  # partition, offset, reason
    created_at_ms: int = 0

    def to_json(self) -> str:
        data = {
            "version": MANIFEST_VERSION,
            "seq": self.seq,
            "shard": self.shard,
            "rows": self.rows,
            "size": self.size,
            "sha256": self.sha256,
            "topic": self.topic,
            "layout": self.layout,
            "offsets": {str(p): {"start": a, "end": b} for p, (a, b) in sorted(self.offsets.items())},
            "skipped": self.skipped,
            "undecodable": self.undecodable,
            "created_at_ms": self.created_at_ms,
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        return cls(
            seq=int(data["seq"]),
            topic=str(data["topic"]),
            layout=dict(data["layout"]),
            offsets={int(p): (int(span["start"]), int(span["end"])) for p, span in data["offsets"].items()},
            shard=data["shard"],
            rows=int(data["rows"]),
            size=int(data["size"]),
            sha256=data["sha256"],
            skipped={str(k): int(v) for k, v in data["skipped"].items()},
            undecodable=list(data["undecodable"]),
            created_at_ms=int(data["created_at_ms"]),
        )


def resume_offsets(manifests: Iterable[Manifest]) -> dict[int, int]:
    """Per partition, the offset after the last one any committed shard covers: where to read
    next. A partition no manifest names is absent (read it from its beginning)."""
    resume: dict[int, int] = {}
    for manifest in manifests:
        for partition, (_, next_offset) in manifest.offsets.items():
            resume[partition] = max(resume.get(partition, 0), next_offset)
    return resume


def offset_gaps(manifests: Iterable[Manifest]) -> list[str]:
    """Offsets between consecutive shards of a partition that no shard covers, or that two
    shards cover (neither happens unless messages expired from the topic before they were
    read, or the folder was tampered with): one line each, empty when the record is seamless."""
    problems = []
    last: dict[int, tuple[int, int]] = {}  # partition -> (seq, next offset)
    for manifest in sorted(manifests, key=lambda m: m.seq):
        for partition, (first, next_offset) in sorted(manifest.offsets.items()):
            if partition in last and first != last[partition][1]:
                seq, previous = last[partition]
                what = "not exported (expired?)" if first > previous else "exported twice"
                problems.append(
                    f"partition {partition}: offsets {min(first, previous)}-{max(first, previous) - 1} "
                    f"{what} between shards {seq} and {manifest.seq}"
                )
            last[partition] = (manifest.seq, next_offset)
    return problems
