"""`karma export` without Kafka: rows from preferences, the filters and ties, the manifest and
its resume offsets, and crashes at every step of a commit leaving no row twice and none lost."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from aiokafka import TopicPartition
from typer.testing import CliRunner

from karma.cli import app
from karma.schemas.models import Candidate, Preference, Winner
from karma.streams.codecs import encode
from karma.tools.export import files as files_module
from karma.tools.export import manifest as manifest_module
from karma.tools.export import rows as rows_module
from karma.tools.export import shards as shards_module
from karma.tools.export.files import ExportError, Layout, ShardFormat, arrow_schema, load_pyarrow
from karma.tools.export.manifest import MANIFEST_DIR, Manifest, offset_gaps, resume_offsets
from karma.tools.export.rows import COLUMNS, RowFilter, Skip, Skipped, classify, row_of
from karma.tools.export.runner import seek_within
from karma.tools.export.shards import ShardBuilder, ShardStore
from tests import records

TOPIC = "t.preferences"
JSONL = Layout(ShardFormat.JSONL)
PARQUET = Layout(ShardFormat.PARQUET)


def pref(
    n: int,
    winner: Winner = Winner.A,
    *,
    policy: str = "kin",
    confidence: float = 0.9,
    soft_label: float | None = None,
    scores: tuple[float, float] | None = None,
) -> Preference:
    def candidate(side: str) -> Candidate:
        return records.candidate(f"model-{side}", f"r-{n}-{side}", text=f"answer {side} to {n}")

    return records.preference(
        f"p-{n}",
        candidate("a"),
        candidate("b"),
        winner,
        pair_id=f"pair-{n}",
        prompt_text=f"question {n}?",
        policy=policy,
        gap=0.1,
        consistent=True,
        confidence=confidence,
        soft_label=soft_label,
        score_a=scores[0] if scores else None,
        score_b=scores[1] if scores else None,
    )


# -- rows -----------------------------------------------------------------------------------------


def test_a_row_is_the_trl_row_with_the_labels_provenance() -> None:
    row = row_of(pref(1, Winner.B, soft_label=0.2))
    assert row is not None and tuple(row) == COLUMNS
    assert row["prompt"] == "question 1?"
    assert (row["chosen"], row["rejected"]) == ("answer b to 1", "answer a to 1")
    assert (row["chosen_model"], row["rejected_model"]) == ("model-b", "model-a")
    # The record says P(A better) = 0.2; B won, so P(chosen better) = 0.8.
    assert row["soft_label"] == pytest.approx(0.8)
    assert row["preference_id"] == row["pair_id"] == "pair-1" and row["prompt_id"] == "p-1"
    assert (row["judge"], row["policy"], row["gap"], row["confidence"]) == (
        "simulated-judge",
        "kin",
        0.1,
        0.9,
    )
    trl = pref(1, Winner.B).to_trl()
    assert trl is not None and {k: row[k] for k in trl} == trl  # to_trl's columns, as it gives them

    a_won = row_of(pref(2, Winner.A, soft_label=0.7))
    assert a_won is not None and a_won["chosen"] == "answer a to 2" and a_won["soft_label"] == 0.7
    assert row_of(pref(3, Winner.A))["soft_label"] is None  # type: ignore[index]


def test_the_verifiers_scores_follow_the_chosen_side() -> None:
    b_won = row_of(pref(1, Winner.B, scores=(0.0, 1.0)))
    assert b_won is not None and (b_won["chosen_score"], b_won["rejected_score"]) == (1.0, 0.0)
    a_won = row_of(pref(2, Winner.A, scores=(1.0, 0.0)))
    assert a_won is not None and (a_won["chosen_score"], a_won["rejected_score"]) == (1.0, 0.0)
    unscored = row_of(pref(3, Winner.A))  # an LLM judge scores no answer
    assert unscored is not None and (unscored["chosen_score"], unscored["rejected_score"]) == (None, None)


def test_messages_are_trls_conversational_format() -> None:
    row = row_of(pref(1, Winner.A), messages=True)
    assert row is not None
    assert row["prompt"] == [{"role": "user", "content": "question 1?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "answer a to 1"}]
    assert row["rejected"] == [{"role": "assistant", "content": "answer b to 1"}]


def test_ties_are_never_rows_and_filters_say_why() -> None:
    assert row_of(pref(1, Winner.TIE)) is None
    keep_all = RowFilter()
    picky = RowFilter(min_confidence=0.8, policies=frozenset({"kin", "sup"}))
    assert keep_all.skip_reason(pref(1, Winner.TIE)) == Skip.TIE
    # A tie is a tie whatever else it is: it could never have been a row.
    assert picky.skip_reason(pref(1, Winner.TIE, policy="all", confidence=0.1)) == Skip.TIE
    assert picky.skip_reason(pref(1, policy="all")) == Skip.POLICY
    assert picky.skip_reason(pref(1, policy="sup", confidence=0.79)) == Skip.CONFIDENCE
    assert picky.skip_reason(pref(1, policy="sup", confidence=0.8)) is None


def test_classify_decodes_and_reports_what_does_not() -> None:
    row = classify(encode(pref(1)), RowFilter())
    assert isinstance(row, dict) and row["preference_id"] == "pair-1"
    assert classify(encode(pref(1, Winner.TIE)), RowFilter()) == Skipped(Skip.TIE)
    bad = classify(b"\x13\x37 not avro", RowFilter())
    assert isinstance(bad, Skipped) and bad.reason == Skip.UNDECODABLE and "magic byte" in (bad.detail or "")
    assert classify(None, RowFilter()).reason == Skip.UNDECODABLE  # type: ignore[union-attr]


def test_the_parquet_schema_has_the_row_columns() -> None:
    pa, _ = load_pyarrow()
    for messages in (False, True):
        assert tuple(arrow_schema(pa, messages).names) == COLUMNS


# -- manifests ------------------------------------------------------------------------------------


def manifest(seq: int, offsets: dict[int, tuple[int, int]]) -> Manifest:
    return Manifest(seq=seq, topic=TOPIC, layout=JSONL.describe(), offsets=offsets, shard=f"s{seq}", rows=1)


def test_resume_offsets_are_the_highest_next_offset_per_partition() -> None:
    manifests = [manifest(0, {0: (0, 5), 1: (0, 2)}), manifest(1, {0: (5, 9)}), manifest(2, {2: (0, 4)})]
    assert resume_offsets(manifests) == {0: 9, 1: 2, 2: 4}
    assert resume_offsets([]) == {}
    assert offset_gaps(manifests) == []


def test_offset_gaps_name_what_no_shard_covers_and_what_two_do() -> None:
    gaps = offset_gaps([manifest(0, {0: (0, 5)}), manifest(1, {0: (8, 9)}), manifest(2, {0: (7, 10)})])
    assert gaps == [
        "partition 0: offsets 5-7 not exported (expired?) between shards 0 and 1",
        "partition 0: offsets 7-8 exported twice between shards 1 and 2",
    ]


def test_a_manifest_reads_back_as_written() -> None:
    written = Manifest(
        seq=3,
        topic=TOPIC,
        layout=PARQUET.describe(),
        offsets={0: (4, 9), 3: (0, 1)},
        shard="shard-000003.parquet",
        rows=4,
        size=10,
        sha256="ab",
        skipped={"tie": 2},
        undecodable=[{"partition": 0, "offset": 5, "reason": "why"}],
        created_at_ms=7,
    )
    assert Manifest.from_json(written.to_json()) == written


# -- the folder: commits, crashes, resume -----------------------------------------------------------

Message = tuple[int, int, bytes | None]  # partition, offset, value


def topic_messages(count: int = 40, partitions: int = 3) -> list[Message]:
    """A topic's messages as a consumer sees them: every 4th preference a tie, one undecodable."""
    messages: list[Message] = []
    offsets = dict.fromkeys(range(partitions), 0)
    for n in range(count):
        partition = n % partitions
        value = b"garbage" if n == 13 else encode(pref(n, Winner.TIE if n % 4 == 3 else Winner.A))
        messages.append((partition, offsets[partition], value))
        offsets[partition] += 1
    return messages


def decided_ids(messages: list[Message]) -> set[str]:
    ids = set()
    for _, _, value in messages:
        outcome = classify(value, RowFilter())
        if isinstance(outcome, dict):
            ids.add(outcome["preference_id"])
    return ids


def exported_ids(folder: Path, layout: Layout = JSONL) -> list[str]:
    """Every row's preference_id over the folder's shards (each shard must load)."""
    ids: list[str] = []
    for path in sorted(folder.glob(f"shard-*.{layout.format.value}")):
        if layout.format == ShardFormat.PARQUET:
            table = pq.read_table(path)
            assert tuple(table.column_names) == COLUMNS
            ids.extend(table.column("preference_id").to_pylist())
        else:
            for line in path.read_text().splitlines():
                row = json.loads(line)
                assert tuple(row) == COLUMNS
                ids.append(row["preference_id"])
    return ids


def export(folder: Path, messages: list[Message], layout: Layout = JSONL, shard_rows: int = 4) -> ShardStore:
    """One exporter run as runner.py does it, over a topic that has `messages`: resume where the
    manifests say, read each partition from there, commit the last partial shard at the end."""
    with ShardStore.open(folder, TOPIC, layout) as store:
        resume = store.resume_offsets()
        positions = {p: resume.get(p, 0) for p in range(3)}
        builder = ShardBuilder(store, positions, shard_rows=shard_rows)
        for partition, offset, value in messages:
            if offset >= positions[partition]:  # the consumer was seeked there
                builder.add(partition, offset, value)
        builder.flush()
    return store


@pytest.mark.parametrize("layout", [JSONL, PARQUET], ids=["jsonl", "parquet"])
def test_shards_hold_every_decided_preference_once_and_cover_every_offset(
    tmp_path: Path, layout: Layout
) -> None:
    messages = topic_messages()
    store = export(tmp_path, messages, layout)
    ids = exported_ids(tmp_path, layout)
    assert sorted(ids) == sorted(decided_ids(messages)) and len(ids) == len(set(ids))
    assert store.resume_offsets() == {0: 14, 1: 13, 2: 13}  # 40 messages over 3 partitions
    assert offset_gaps(store.manifests) == []
    rows, shards, skipped = store.totals()
    assert (rows, shards) == (len(ids), len(list(tmp_path.glob("shard-*"))))
    assert skipped == {"tie": 10, "undecodable": 1}
    undecodable = [u for m in store.manifests for u in m.undecodable]
    assert undecodable == [{"partition": 1, "offset": 4, "reason": undecodable[0]["reason"]}]
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / MANIFEST_DIR).glob(".*"))

    again = export(tmp_path, messages, layout)  # nothing new on the topic: nothing written
    assert len(again.manifests) == len(store.manifests) and sorted(exported_ids(tmp_path, layout)) == sorted(
        ids
    )


def crash_on_replace(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The process dies at the nth rename: commits' renames go manifest, shard, manifest, shard..."""
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise SystemExit(f"killed at rename {nth}")
        real_replace(src, dst)

    monkeypatch.setattr(shards_module.os, "replace", replace)


@pytest.mark.parametrize(
    "nth, what",
    [
        (1, "both written, nothing renamed: the shard is not committed and is read again"),
        (2, "manifest renamed, shard still a temporary: the shard is rolled forward"),
        (3, "first shard complete, second manifest not renamed"),
        (6, "a later shard, between its two renames"),
    ],
)
@pytest.mark.parametrize("layout", [JSONL, PARQUET], ids=["jsonl", "parquet"])
def test_a_crash_at_any_rename_leaves_no_row_twice_and_none_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nth: int, what: str, layout: Layout
) -> None:
    messages = topic_messages()
    crash_on_replace(monkeypatch, nth)
    with pytest.raises(SystemExit):
        export(tmp_path, messages, layout)
    assert list(tmp_path.glob(".shard-*.tmp")) or list((tmp_path / MANIFEST_DIR).glob(".*.tmp")), what
    monkeypatch.undo()

    store = export(tmp_path, messages, layout)
    ids = exported_ids(tmp_path, layout)
    assert len(ids) == len(set(ids)), f"a row twice after: {what}"
    assert set(ids) == decided_ids(messages), f"rows lost after: {what}"
    assert offset_gaps(store.manifests) == []
    assert bool(store.recovery.rolled_forward) == (nth % 2 == 0), what
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / MANIFEST_DIR).glob(".*.tmp"))
    assert store.totals()[2] == {"tie": 10, "undecodable": 1}  # skipped messages counted once too


def test_a_crash_while_writing_rows_leaves_a_temporary_that_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = topic_messages()
    real_write = shards_module.write_rows

    def half_written(path: Path, rows: list[dict[str, object]], layout: Layout) -> None:
        path.write_text(json.dumps(rows[0])[:20])  # torn mid-row
        raise SystemExit("killed while writing")

    # files.py's write_rows, replaced where ShardStore.commit looks it up
    monkeypatch.setattr(shards_module, "write_rows", half_written)
    with pytest.raises(SystemExit):
        export(tmp_path, messages)
    monkeypatch.setattr(shards_module, "write_rows", real_write)
    store = export(tmp_path, messages)
    assert store.recovery.deleted == [".shard-000000.jsonl.tmp"]
    ids = exported_ids(tmp_path)
    assert sorted(ids) == sorted(decided_ids(messages))


def test_resume_continues_where_the_last_shard_ended_as_the_topic_grows(tmp_path: Path) -> None:
    messages = topic_messages(60)
    first_part = [m for m in messages if m[1] < 10]  # the topic as it was at the first run
    export(tmp_path, first_part)
    assert sorted(exported_ids(tmp_path)) == sorted(decided_ids(first_part))
    store = export(tmp_path, messages)
    ids = exported_ids(tmp_path)
    assert sorted(ids) == sorted(decided_ids(messages)) and len(ids) == len(set(ids))
    assert offset_gaps(store.manifests) == []


def test_a_stretch_of_ties_is_committed_without_a_shard_and_not_counted_again(tmp_path: Path) -> None:
    ties: list[Message] = [(0, n, encode(pref(n, Winner.TIE))) for n in range(5)]
    store = export(tmp_path, ties)
    assert [(m.shard, m.rows, m.offsets, m.skipped) for m in store.manifests] == [
        (None, 0, {0: (0, 5)}, {"tie": 5})
    ]
    assert list(tmp_path.glob("shard-*")) == []
    store = export(tmp_path, ties)
    assert len(store.manifests) == 1 and store.totals()[2] == {"tie": 5}


def test_a_message_delivered_twice_is_taken_once(tmp_path: Path) -> None:
    with ShardStore.open(tmp_path, TOPIC, JSONL) as store:
        builder = ShardBuilder(store, {0: 0}, shard_rows=100)
        for offset in (0, 1, 1, 0, 2):
            builder.add(0, offset, encode(pref(offset)))
        builder.flush()
    assert sorted(exported_ids(tmp_path)) == ["pair-0", "pair-1", "pair-2"]


def test_a_shard_is_committed_after_shard_seconds(tmp_path: Path) -> None:
    now = [100.0]
    with ShardStore.open(tmp_path, TOPIC, JSONL) as store:
        builder = ShardBuilder(store, {0: 0}, shard_rows=100, shard_seconds=5.0, clock=lambda: now[0])
        assert not builder.due()  # nothing read: nothing to commit
        builder.add(0, 0, encode(pref(0)))
        now[0] += 4.9
        assert not builder.due()
        now[0] += 0.1
        assert builder.due() and builder.flush() is not None and not builder.due()
        assert builder.flush() is None


def test_a_shard_deleted_by_its_reader_is_not_exported_again(tmp_path: Path) -> None:
    messages = topic_messages()
    export(tmp_path, messages)
    first = sorted(tmp_path.glob("shard-*"))[0]
    first.unlink()  # a trainer that prunes what it has consumed
    store = export(tmp_path, messages)
    assert store.recovery.missing == [first.name] and not first.exists()


def test_one_folder_one_exporter_one_topic_one_layout(tmp_path: Path) -> None:
    export(tmp_path, topic_messages(8))
    with ShardStore.open(tmp_path, TOPIC, JSONL), pytest.raises(ExportError, match="another `karma export`"):
        ShardStore.open(tmp_path, TOPIC, JSONL)
    with pytest.raises(ExportError, match="holds shards of topic t.preferences"):
        ShardStore.open(tmp_path, "other.preferences", JSONL)
    with pytest.raises(ExportError, match="format='jsonl'.*format='parquet'"):
        ShardStore.open(tmp_path, TOPIC, PARQUET)
    with pytest.raises(ExportError, match="min_confidence=None.*min_confidence=0.5"):
        ShardStore.open(tmp_path, TOPIC, Layout(ShardFormat.JSONL, row_filter=RowFilter(min_confidence=0.5)))
    ShardStore.open(tmp_path, TOPIC, JSONL).close()  # the failed opens released the lock


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(ExportError, match=r"pip install 'karma-stream\[export\]'"):
        ShardStore.open(tmp_path, TOPIC, PARQUET)


def test_the_command_refuses_an_unknown_policy() -> None:
    result = CliRunner().invoke(app, ["export", "--out", "x", "--policy", "kinn"])
    assert result.exit_code == 2
    assert "unknown kinn" in result.output


def test_rows_module_knows_no_kafka() -> None:
    # rows.py, manifest.py, files.py and shards.py are read by training-side scripts
    # (deploy/gpu/dpo_smoke.py): no broker.
    for module in (rows_module, manifest_module, files_module, shards_module):
        source = Path(module.__file__ or "").read_text()
        assert "aiokafka" not in source and "faust" not in source


# --- where a reader of a topic resumes (karma export and karma train) -------------------------


class OffsetsConsumer:
    """What `seek_within` asks of an AIOKafkaConsumer: each partition's bounds, and the seeks."""

    def __init__(self, bounds: dict[int, tuple[int, int]]) -> None:
        self.bounds = bounds
        self.seeks: dict[int, int] = {}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp.partition][0] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp.partition][1] for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp.partition] = offset


def test_a_reader_resumes_where_asked_within_each_partitions_bounds() -> None:
    consumer = OffsetsConsumer({0: (0, 10), 1: (5, 9), 2: (3, 8)})
    tps = [TopicPartition("karma.preferences", p) for p in range(3)]
    said: list[str] = []

    def recreated(tp: TopicPartition, start: int, end: int) -> ExportError:
        return ExportError(f"{tp.partition}: {start} > {end}")

    # Partition 0 where asked, 1 past what expired (from its beginning, with a warning), 2 from
    # its beginning (nothing asked).
    positions = asyncio.run(seek_within(consumer, tps, {0: 7, 1: 2}, recreated, said.append))  # type: ignore[arg-type]
    assert positions == consumer.seeks == {0: 7, 1: 5, 2: 3}
    assert said == ["warning: partition 1: offsets 2-4 expired from the topic before they were read"]
    # Past the end: the topic was made again; reading it would reuse offsets already accounted for.
    with pytest.raises(ExportError, match="0: 11 > 10"):
        asyncio.run(seek_within(consumer, tps, {0: 11}, recreated, said.append))  # type: ignore[arg-type]
