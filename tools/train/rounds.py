"""`karma train`'s bookkeeping, with no Kafka and no torch: which preferences a round takes, where
its input stands, the model versions on disk, and where a trainer resumes.

Exactly once with respect to the input, across crashes. A round's checkpoint and the position of
the input after it travel together: the `Checkpoint` record names the preferences it trained on
and the next offset of every partition (`input_offsets`), and the version's folder holds the same
record (`checkpoint.json`), written before the folder is renamed into place. So:

- killed while training or writing: the staging folder is deleted at the next start, nothing was
  published, and the round is trained again from the same parent on the same preferences;
- killed after the rename, before the record was published: the folder's record is published at
  the next start (same id), and the trainer reads on from its offsets;
- killed after publishing, before committing the group's offsets: the newest record's offsets
  win over the group's, which are a hint for lag monitoring only.

A preference id already trained on (any version of the model) is skipped if it comes again (a
judge's replay writes the same preference id twice).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from karma.schemas.models import Checkpoint, Preference
from karma.streams.codecs import DecodeError, decode
from karma.tools.export.files import fsync_dir
from karma.tools.export.rows import RowFilter, row_of

MANIFEST = "checkpoint.json"  # in each version's folder: the record it was published as
STAGING_PREFIX = ".staging-v"


@dataclass(frozen=True)
class PreferenceFilter:
    """Which preferences the trainer learns from: ties never (DPO needs a winner); then those of
    the given policies and judges (all when empty), at least `min_confidence` sure, and, with
    `real_only`, none that a simulated judge or model wrote."""

    policies: frozenset[str] = frozenset()
    judges: frozenset[str] = frozenset()
    min_confidence: float | None = None
    real_only: bool = False

    def skip_reason(self, preference: Preference) -> str | None:
        skip = RowFilter(self.min_confidence, self.policies).skip_reason(preference)
        if skip is not None:
            return str(skip.value)
        if self.judges and preference.judge not in self.judges:
            return "judge"
        sides = (preference.response_a, preference.response_b)
        if self.real_only and (preference.simulated or any(side.simulated for side in sides)):
            return "simulated"
        return None


@dataclass
class RoundBuilder:
    """The preferences of the round being filled, message by message, and the input's position
    after the last message offered: the next offset of each partition."""

    size: int
    positions: dict[int, int]
    trained: frozenset[str]  # preference ids of earlier rounds
    preference_filter: PreferenceFilter = field(default_factory=PreferenceFilter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    simulated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def full(self) -> bool:
        return len(self.ids) >= self.size

    def offer(self, partition: int, offset: int, value: bytes | None) -> None:
        if self.full:
            raise RuntimeError("the round is full: the next message belongs to the next round")
        self.positions[partition] = offset + 1
        try:
            preference = decode(value or b"", Preference)
        except DecodeError:
            self.skipped["undecodable"] += 1
            return
        assert isinstance(preference, Preference)
        if preference.preference_id in self.trained or preference.preference_id in self.ids:
            self.skipped["trained already"] += 1
            return
        reason = self.preference_filter.skip_reason(preference)
        row = None if reason is not None else row_of(preference, messages=True)
        if row is None:
            self.skipped[reason or "tie"] += 1
            return
        self.rows.append(dict(row))
        self.ids.append(preference.preference_id)
        self.simulated += int(preference.simulated)

    def next_round(self) -> RoundBuilder:
        """The round after this one: from where this one's input ended."""
        return RoundBuilder(
            self.size, dict(self.positions), self.trained | frozenset(self.ids), self.preference_filter
        )


class VersionStore:
    """One model's versions on disk: `<root>/v<k>/` is complete (renamed into place whole, with
    its record in checkpoint.json); `<root>/.staging-v<k>/` is a round being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def final(self, version: int) -> Path:
        return (self.root / f"v{version}").resolve()

    def clean(self) -> list[Path]:
        """Deletes the staging folders of rounds that never finished; returns them."""
        stale = sorted(self.root.glob(f"{STAGING_PREFIX}*"))
        for path in stale:
            shutil.rmtree(path)
        return stale

    def staging(self, version: int) -> Path:
        path = self.root / f"{STAGING_PREFIX}{version}"
        if path.exists():
            shutil.rmtree(path)
        return path

    def commit(self, staging: Path, checkpoint: Checkpoint) -> Path:
        """The record written into the staging folder, every file made durable, then the folder
        renamed to `v<version>`: a crash leaves the whole version or none of it."""
        final = self.final(checkpoint.version)
        if checkpoint.path != str(final):
            raise ValueError(f"checkpoint {checkpoint.version} names {checkpoint.path}, not {final}")
        (staging / MANIFEST).write_text(checkpoint.model_dump_json(indent=2))
        for path in staging.rglob("*"):
            if path.is_file():
                with path.open("rb") as file:
                    os.fsync(file.fileno())
        fsync_dir(staging)
        if final.exists():  # the same version written by a round killed before it published
            shutil.rmtree(final)
        staging.rename(final)
        fsync_dir(self.root)
        return final

    def written(self) -> dict[int, Checkpoint]:
        """The complete versions on disk, by version."""
        found = {}
        for manifest in self.root.glob(f"v*/{MANIFEST}"):
            checkpoint = Checkpoint.model_validate(json.loads(manifest.read_text()))
            found[checkpoint.version] = checkpoint
        return found


@dataclass(frozen=True)
class Resume:
    newest: Checkpoint | None  # the version training goes on from (None: the configured checkpoint)
    unpublished: list[Checkpoint]  # written before a crash, never published: publish them first
    trained: frozenset[str]  # preference ids every version so far trained on


def resume(published: Iterable[Checkpoint], written: Mapping[int, Checkpoint], model: str) -> Resume:
    """Where a trainer of `model` goes on from: the newest version published or on disk."""
    mine = {c.version: c for c in published if c.model == model}
    newest_published = max(mine, default=1)
    unpublished = [written[v] for v in sorted(written) if v > newest_published and written[v].model == model]
    every = {**mine, **{c.version: c for c in unpublished}}
    newest = every[max(every)] if every else None
    trained = frozenset(pid for c in every.values() for pid in c.preference_ids)
    return Resume(newest, unpublished, trained)
