"""The shard folder of `karma export`: shards and their manifests, written so that a shard and
the offsets it covers become durable together, and the resume offsets read back from them.
No Kafka here: `ShardBuilder` takes (partition, offset, value) from whoever reads the topic.

The folder:

    DIR/shard-000000.parquet          the rows (or .jsonl), visible only once committed
    DIR/.manifests/shard-000000.json  what shard 0 covers: per partition, offsets [start, end)
    DIR/.lock                         held (flock) by the one exporter writing to DIR

Committing shard N (`ShardStore.commit`): the rows go to `DIR/.shard-N.ext.tmp` and are
fsynced; the manifest goes to `.manifests/.shard-N.json.tmp` and is fsynced; the manifest is
renamed into place (the commit point) and its folder fsynced; then the shard is renamed into
place and DIR fsynced. On start (`ShardStore.open`), a manifest whose shard is still a `.tmp`
(a crash between the two renames) has it renamed into place (rolled forward; the manifest says
it was complete, and its size and SHA-256 are checked); every other `.tmp` is deleted: its
offsets were never recorded, so they are read again. The manifests are the truth about what
was exported: reading resumes, per partition, at the highest `next` they record
(`resume_offsets`), whatever the consumer group has committed on the broker.

The dot-names keep manifests, temporaries and the lock out of `datasets.load_dataset(...,
data_dir=DIR)`, which skips hidden files, and out of a `shard-*.parquet` glob. A manifest may
cover offsets and no rows (`shard` null: a stretch of ties, say), so that a restart does not
count the same skipped messages again.

What a manifest records, and the resume offsets and gaps read from them, is manifest.py; a
shard file's format, its durable writing and its digest are files.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from karma.tools.export.files import (
    ExportError,
    Layout,
    ShardFormat,
    file_digest,
    fsync_dir,
    fsynced,
    load_pyarrow,
    shard_name,
    write_rows,
)
from karma.tools.export.manifest import MANIFEST_DIR, Manifest, offset_gaps, resume_offsets
from karma.tools.export.rows import Row, Skip, Skipped, classify

LOCK_FILE = ".lock"


# -- the folder ----------------------------------------------------------------------------------


@dataclass
class Recovery:
    """What opening a folder found and did."""

    rolled_forward: list[str] = field(default_factory=list)  # shards renamed into place
    deleted: list[str] = field(default_factory=list)  # temporaries of uncommitted shards
    missing: list[str] = field(default_factory=list)  # committed shards no longer there (deleted?)
    gaps: list[str] = field(default_factory=list)  # see offset_gaps


class ShardStore:
    """A shard folder opened for writing by one exporter (it holds the folder's lock)."""

    def __init__(self, folder: Path, topic: str, layout: Layout, lock: IO[Any]) -> None:
        self.folder = folder
        self.topic = topic
        self.layout = layout
        self.manifest_dir = folder / MANIFEST_DIR
        self._lock = lock
        self.manifests: list[Manifest] = []
        self.recovery = Recovery()

    @classmethod
    def open(cls, folder: Path, topic: str, layout: Layout) -> ShardStore:
        """Locks the folder (creating it), finishes or discards what a crash left, and reads the
        manifests; ExportError when another exporter holds it or its shards are of another topic
        or layout."""
        if layout.format == ShardFormat.PARQUET:
            load_pyarrow()  # fail before reading anything, not at the first shard
        (folder / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
        lock = (folder / LOCK_FILE).open("a")
        try:
            # Released by the kernel when the process ends, SIGKILL included: no stale lock.
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ExportError(f"another `karma export` is writing to {folder}") from None
        store = cls(folder, topic, layout, lock)
        try:
            store._load()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load(self) -> None:
        for path in sorted(self.manifest_dir.glob(".*.tmp")):
            path.unlink()
            self.recovery.deleted.append(f"{MANIFEST_DIR}/{path.name}")
        for path in sorted(self.manifest_dir.glob("shard-*.json")):
            try:
                manifest = Manifest.from_json(path.read_text())
            except (ValueError, KeyError, TypeError) as exc:
                raise ExportError(f"{path} is not a readable manifest ({exc}); move it away") from None
            self._check(manifest, path)
            self.manifests.append(manifest)
        self.manifests.sort(key=lambda m: m.seq)
        for manifest in self.manifests:
            if manifest.shard is not None and not (self.folder / manifest.shard).exists():
                self._roll_forward(manifest)
        for path in sorted(self.folder.glob(".shard-*.tmp")):
            path.unlink()
            self.recovery.deleted.append(path.name)
        if self.recovery.rolled_forward:
            fsync_dir(self.folder)
        self.recovery.gaps = offset_gaps(self.manifests)

    def _check(self, manifest: Manifest, path: Path) -> None:
        if manifest.topic != self.topic:
            raise ExportError(
                f"{self.folder} holds shards of topic {manifest.topic} ({path.name}), not {self.topic}: "
                "use another --out"
            )
        wanted = self.layout.describe()
        if manifest.layout != wanted:
            keys = wanted.keys() | manifest.layout.keys()
            differ = sorted(k for k in keys if manifest.layout.get(k) != wanted.get(k))
            theirs = ", ".join(f"{k}={manifest.layout.get(k)!r}" for k in differ)
            raise ExportError(
                f"{self.folder} holds shards exported with {theirs}; this export asks for "
                + ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
                + ": use another --out, or the same options"
            )

    def _roll_forward(self, manifest: Manifest) -> None:
        """A committed manifest whose shard is still a temporary: the crash came between the two
        renames, and the temporary is complete (it was fsynced before the manifest was written)."""
        assert manifest.shard is not None
        tmp = self.folder / f".{manifest.shard}.tmp"
        if tmp.exists() and file_digest(tmp) == (manifest.size, manifest.sha256):
            os.replace(tmp, self.folder / manifest.shard)
            self.recovery.rolled_forward.append(manifest.shard)
        else:
            # Deleted by whoever consumed it (a trainer may prune what it has read): not ours to redo.
            self.recovery.missing.append(manifest.shard)

    @property
    def next_seq(self) -> int:
        return self.manifests[-1].seq + 1 if self.manifests else 0

    def resume_offsets(self) -> dict[int, int]:
        return resume_offsets(self.manifests)

    def commit(
        self,
        rows: list[Row],
        offsets: dict[int, tuple[int, int]],
        skipped: dict[str, int] | None = None,
        undecodable: list[dict[str, Any]] | None = None,
    ) -> Manifest:
        """Makes a shard of `rows` and the offsets it covers durable together (see the module
        docstring); returns its manifest."""
        seq = self.next_seq
        shard, size, digest = None, 0, None
        if rows:
            shard = shard_name(seq, self.layout.format)
            tmp = self.folder / f".{shard}.tmp"
            write_rows(tmp, rows, self.layout)
            size, digest = file_digest(tmp)
        manifest = Manifest(
            seq=seq,
            topic=self.topic,
            layout=self.layout.describe(),
            offsets=dict(offsets),
            shard=shard,
            rows=len(rows),
            size=size,
            sha256=digest,
            skipped=dict(skipped or {}),
            undecodable=list(undecodable or []),
            created_at_ms=int(time.time() * 1000),
        )
        name = f"shard-{seq:06d}.json"
        manifest_tmp = self.manifest_dir / f".{name}.tmp"
        with manifest_tmp.open("w", encoding="utf-8") as file:
            file.write(manifest.to_json())
            fsynced(file)
        os.replace(manifest_tmp, self.manifest_dir / name)  # the commit point
        fsync_dir(self.manifest_dir)
        self.manifests.append(manifest)
        if shard is not None:
            os.replace(self.folder / f".{shard}.tmp", self.folder / shard)
            fsync_dir(self.folder)
        return manifest

    def totals(self) -> tuple[int, int, Counter[str]]:
        """Rows, shards and skipped messages by reason over every manifest of the folder."""
        skipped: Counter[str] = Counter()
        for manifest in self.manifests:
            skipped.update(manifest.skipped)
        rows = sum(m.rows for m in self.manifests)
        return rows, sum(1 for m in self.manifests if m.shard is not None), skipped


# -- from messages to shards ---------------------------------------------------------------------


class ShardBuilder:
    """Turns the messages of the preferences topic, in each partition's order, into shards: a
    shard is committed when it has `shard_rows` rows, or `shard_seconds` after its first message,
    or on `flush()`. It knows each partition's position (the next offset to cover), so a message
    at an offset already covered (delivered twice) is ignored, and a shard's offsets are exactly
    those read since the previous one."""

    def __init__(
        self,
        store: ShardStore,
        positions: dict[int, int],
        *,
        shard_rows: int = 10_000,
        shard_seconds: float | None = None,
        on_undecodable: Callable[[int, int, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.positions = dict(positions)  # partition -> next offset to cover
        self.shard_rows = shard_rows
        self.shard_seconds = shard_seconds
        self.on_undecodable = on_undecodable
        self.clock = clock
        self.consumed = 0  # messages taken this run
        self.committed: list[Manifest] = []  # this run's
        self.skipped: Counter[str] = Counter()  # this run's, committed or not
        self._reset()

    def _reset(self) -> None:
        self._rows: list[Row] = []
        self._first: dict[int, int] = {}
        self._skipped: Counter[str] = Counter()
        self._undecodable: list[dict[str, Any]] = []
        self._opened_at: float | None = None

    @property
    def pending(self) -> int:
        """Rows not yet committed."""
        return len(self._rows)

    def add(self, partition: int, offset: int, value: bytes | None) -> Manifest | None:
        """Takes one message; returns the manifest of the shard it completed, if it did."""
        if offset < self.positions.get(partition, 0):
            return None  # covered already
        if self._opened_at is None:
            self._opened_at = self.clock()
        self._first.setdefault(partition, self.positions.get(partition, offset))
        self.positions[partition] = offset + 1
        self.consumed += 1
        layout = self.store.layout
        outcome = classify(value, layout.row_filter, layout.messages)
        if isinstance(outcome, Skipped):
            self._skipped[outcome.reason.value] += 1
            self.skipped[outcome.reason.value] += 1
            if outcome.reason == Skip.UNDECODABLE:
                reason = outcome.detail or "undecodable"
                self._undecodable.append({"partition": partition, "offset": offset, "reason": reason})
                if self.on_undecodable is not None:
                    self.on_undecodable(partition, offset, reason)
        else:
            self._rows.append(outcome)
        return self.flush() if len(self._rows) >= self.shard_rows else None

    def due(self) -> bool:
        """Whether the open shard has been open `shard_seconds` (time to commit it)."""
        return (
            self.shard_seconds is not None
            and self._opened_at is not None
            and self.clock() - self._opened_at >= self.shard_seconds
        )

    def flush(self) -> Manifest | None:
        """Commits what was read since the last commit (a manifest without a shard when every
        message was skipped); None when nothing was read."""
        if not self._first:
            return None
        offsets = {p: (first, self.positions[p]) for p, first in self._first.items()}
        manifest = self.store.commit(self._rows, offsets, dict(self._skipped), self._undecodable)
        self.committed.append(manifest)
        self._reset()
        return manifest
