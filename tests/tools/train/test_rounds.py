"""`karma train`'s bookkeeping without Kafka or torch: which preferences a round takes (ties and
filtered ones skipped, each id once across rounds), where the input stands after a round, the
versions on disk (whole or not at all), and where a trainer resumes after each kind of crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from karma.schemas.models import Checkpoint, InputOffset, Preference, Winner, checkpoint_id_for
from karma.streams.codecs import encode
from karma.tools.train.rounds import MANIFEST, PreferenceFilter, RoundBuilder, VersionStore, resume
from tests import records


def pref(prompt: str, winner: Winner = Winner.A, policy: str = "kin", **verdict: Any) -> Preference:
    """A verdict on the answers of m1 and m2 (real answers when the verdict is not simulated)."""
    real = verdict.get("simulated") is False
    a, b = (records.candidate(m, prompt_id=prompt, simulated=not real) for m in ("m1", "m2"))
    return records.preference_on(records.kin_pair(prompt, a, b, policy=policy), winner, **verdict)


def test_a_round_takes_decided_preferences_once_and_records_where_the_input_stands() -> None:
    builder = RoundBuilder(size=3, positions={0: 0, 1: 5}, trained=frozenset({pref("p-old").preference_id}))
    offered = [
        (0, 0, encode(pref("p-1"))),
        (0, 1, encode(pref("p-2", Winner.TIE))),  # no winner: nothing to learn
        (1, 5, encode(pref("p-1"))),  # a replay of p-1's verdict
        (1, 6, encode(pref("p-old"))),  # trained on in an earlier round
        (0, 2, b"\x00not a preference"),
        (0, 3, encode(pref("p-3", Winner.B))),
    ]
    for partition, offset, value in offered:
        builder.offer(partition, offset, value)
    assert not builder.full and len(builder.rows) == 2
    builder.offer(1, 7, encode(pref("p-4")))
    assert builder.full
    assert builder.ids == [pref(p).preference_id for p in ("p-1", "p-3", "p-4")]
    assert builder.positions == {0: 4, 1: 8}  # the next offset of each partition
    assert builder.skipped == {"tie": 1, "trained already": 2, "undecodable": 1}
    # Winner B: the chosen answer is response_b's, in TRL's conversational form.
    row = builder.rows[1]
    assert row["chosen"] == [{"role": "assistant", "content": "answer of m2"}]
    assert row["prompt"] == [{"role": "user", "content": records.PROMPT_TEXT}]
    with pytest.raises(RuntimeError, match="full"):
        builder.offer(1, 8, encode(pref("p-5")))
    following = builder.next_round()
    assert following.positions == {0: 4, 1: 8} and not following.ids
    following.offer(0, 4, encode(pref("p-3")))  # trained on in the round before
    assert following.skipped == {"trained already": 1}


def test_the_filter_takes_policies_judges_confidence_and_real_only() -> None:
    only = PreferenceFilter(
        policies=frozenset({"kin"}), judges=frozenset({"verifier"}), min_confidence=0.8, real_only=True
    )
    real = {"judge": "verifier", "simulated": False, "confidence": 0.9}
    assert only.skip_reason(pref("p-1", **real)) is None
    assert only.skip_reason(pref("p-1", **(real | {"judge": "simulated-judge"}))) == "judge"
    assert only.skip_reason(pref("p-1", **(real | {"confidence": 0.5}))) == "confidence"
    assert only.skip_reason(pref("p-1", **(real | {"simulated": True}))) == "simulated"
    assert only.skip_reason(pref("p-1", Winner.TIE, **real)) == "tie"
    assert only.skip_reason(pref("p-1", policy="sup", **real)) == "policy"
    simulated_answer = pref("p-1", **real).model_copy(
        update={"response_b": records.candidate("m2", prompt_id="p-1", simulated=True)}
    )
    assert only.skip_reason(simulated_answer) == "simulated"


def checkpoint(store: VersionStore, version: int, ids: list[str], offset: int) -> Checkpoint:
    return Checkpoint(
        checkpoint_id=checkpoint_id_for("m1", version),
        model="m1",
        version=version,
        path=str(store.final(version)),
        parent_version=version - 1,
        parent_path=str(store.final(version - 1)),
        preference_ids=ids,
        train_loss=0.6,
        reward_margin=0.2,
        reward_accuracy=0.8,
        method="full",
        consumer_group="g",
        input_offsets=[InputOffset(partition=0, offset=offset)],
        simulated_preferences=0,
        train_seconds=1.0,
    )


def test_a_version_is_on_disk_whole_or_not_at_all(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "m1")
    staging = store.staging(2)
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"weights")
    assert store.written() == {}  # a staging folder is no version
    ck = checkpoint(store, 2, ["a", "b"], 2)
    final = store.commit(staging, ck)
    assert final == tmp_path / "m1" / "v2" and not staging.exists()
    assert (final / "model.safetensors").read_bytes() == b"weights"
    assert store.written() == {2: ck} and (final / MANIFEST).exists()
    # A round killed while writing: its staging folder is deleted at the next start.
    store.staging(3).mkdir()
    assert [p.name for p in store.clean()] == [".staging-v3"] and store.written() == {2: ck}
    with pytest.raises(ValueError, match="names"):
        store.commit(store.staging(3), ck.model_copy(update={"version": 3, "parent_version": 2}))


def test_resume_after_each_kind_of_crash(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "m1")
    v2, v3 = checkpoint(store, 2, ["a", "b"], 2), checkpoint(store, 3, ["c", "d"], 4)
    other_model = v3.model_copy(update={"model": "m2", "version": 7, "parent_version": 6})
    # Nothing yet: version 1, nothing trained.
    assert resume([], {}, "m1") == resume([other_model], {}, "m1")
    assert resume([], {}, "m1").newest is None
    # Killed mid-round: the published versions say where to go on.
    start = resume([v2, other_model], {2: v2}, "m1")
    assert start.newest == v2 and start.unpublished == [] and start.trained == {"a", "b"}
    # Killed after the rename, before publishing: v3 is published first, and training goes on from it.
    start = resume([v2], {2: v2, 3: v3}, "m1")
    assert start.newest == v3 and start.unpublished == [v3] and start.trained == {"a", "b", "c", "d"}
    # Published, folder gone (another machine): the record still says where the input stands.
    assert resume([v2, v3], {}, "m1").newest == v3
