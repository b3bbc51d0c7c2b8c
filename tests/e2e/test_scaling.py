"""Scale out and in under load, on the real broker: a second member joins the generation group
and the rating group mid-stream, then the first member of each leaves (SIGTERM) while work
remains, and a generation batch (32 prompts, 0.25 s per answer: 8 s) takes longer than the
6 s session timeout. Every prompt still ends as exactly its preferences (`karma audit`: all
complete, nothing unaccounted), no pair or preference is invented, a replay may publish an id
twice (at least once) but de-duplicated by id the preferences are exactly the expected ones,
and the members that leave exit 0.

And the groups really scale: both generation members and both rating members hold partitions
in one group generation, and no member is dropped from its group. Before, with a 6 s rebalance
timeout and a queue of batches worked off inside each rebalance, a generation member busy with
its batches missed every rebalance and was expelled: the two generation members were never in
one generation, the group had no member for 12-20 s, and the expelled member's batch was done
twice.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from typing import Any

from tests.e2e.conftest import Pipeline, audit, ids, make_prompts

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
LATENCY_S = 0.25  # per answer; a backend answers a batch's prompts one after another
BATCH_SIZE = 32  # the default: one generation batch takes 32 x 0.25 s = 8 s
PROMPTS = 256


def worker(pipeline: Pipeline, role: str) -> subprocess.Popen[bytes]:
    """`karma worker <role>` for every model of the pool; metrics off, as they share the host."""
    return pipeline.start_worker("worker", role, "--metrics-port", "0")


def wait_until_assigned(pipeline: Pipeline, member: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    """Until `member` has been assigned partitions and resumed consuming (faust's "Worker ready",
    logged once each rebalance's recovery is done)."""
    deadline = time.monotonic() + timeout_s
    while not any(f"[{member.pid}]" in line and "Worker ready" in line for line in pipeline.log_lines()):
        assert member.poll() is None and time.monotonic() < deadline, pipeline.log()
        time.sleep(0.5)


def members_by_generation(lines: list[str], names: dict[int, str]) -> dict[str, dict[int, list[str]]]:
    """From the workers' log: the members of each generation of the generation and rating groups."""
    groups: dict[str, dict[int, list[str]]] = {"generate": {}, "rate": {}}
    for line in lines:
        joined = re.search(r"\[(\d+)\] \[INFO\] Joined group '[^']*-(\w+)' \(generation (\d+)\)", line)
        if joined and joined[2] in groups:
            groups[joined[2]].setdefault(int(joined[3]), []).append(names.get(int(joined[1]), joined[1]))
    return {group: {n: sorted(m) for n, m in sorted(gens.items())} for group, gens in groups.items()}


def test_members_join_and_leave_mid_stream_without_losing_a_prompt(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(
        pool=[{"name": m, "simulated_latency_s": LATENCY_S} for m in POOL], batch_size=BATCH_SIZE
    )
    assert pipeline.settings.session_timeout_s < BATCH_SIZE * LATENCY_S
    prompts = make_prompts(PROMPTS, tag="scale")
    expected = pipeline.expected_preference_ids(prompts)
    started = time.monotonic()
    pipeline.submit(prompts)
    first_generator, first_rater = worker(pipeline, "generate"), worker(pipeline, "rate")
    worker(pipeline, "judge")
    names = {first_generator.pid: "generate-1", first_rater.pid: "rate-1"}

    # Joining: a second member of the generation group and of the rating group, mid-stream.
    before = pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 20)
    assert set(ids(before)) < expected, "the members must join mid-stream for this test to mean anything"
    joined_at = time.monotonic() - started
    for role in ("generate", "rate"):
        joining = worker(pipeline, role)
        names[joining.pid] = f"{role}-2"
        wait_until_assigned(pipeline, joining)

    # Leaving: the first members, once the second ones hold partitions, while work remains.
    middle = pipeline.read("preferences")
    assert set(ids(middle)) < expected, "the members must leave mid-stream for this test to mean anything"
    left_at = time.monotonic() - started
    stopping = time.monotonic()
    for leaving in (first_generator, first_rater):
        pipeline.stop_worker(leaving)
    stop_s = time.monotonic() - stopping
    assert (first_generator.returncode, first_rater.returncode) == (0, 0), pipeline.log()

    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=240)
    finished_at = time.monotonic() - started
    assert set(ids(received)) == expected  # none lost, none invented
    pairs = ids(pipeline.read("pairs"), "pair_id")
    assert set(pairs) == expected
    ledger = audit(pipeline)
    assert ledger["counts"]["unaccounted"] == 0
    assert ledger["counts"]["complete"] == len(prompts), ledger["counts"]
    assert all(w.poll() is None for w in pipeline.workers), pipeline.log()  # none crashed

    copies, responses = Counter(ids(received)), ids(pipeline.read("responses"), "response_id")
    members = members_by_generation(pipeline.log_lines(), names)
    expelled = sum(1 for line in pipeline.log_lines() if "member_id was not recognized" in line)
    print(
        f"\n{PROMPTS} prompts, {len(expected)} preferences: joined at {joined_at:.0f} s "
        f"({len(set(ids(before)))} done), left at {left_at:.0f} s ({len(set(ids(middle)))} done; "
        f"both stopped in {stop_s:.0f} s), all done at {finished_at:.0f} s. Duplicates: "
        f"{sum(n - 1 for n in copies.values())} preference, {len(pairs) - len(set(pairs))} pair, "
        f"{len(responses) - len(set(responses))} response messages. Group generations: {members}; "
        f"members expelled (not back within the rebalance timeout): {expelled}"
    )
    for role in ("generate", "rate"):
        together = [n for n, m in members[role].items() if m == [f"{role}-1", f"{role}-2"]]
        assert together, f"the two {role} members were never in one group generation: {members[role]}"
    assert expelled == 0, pipeline.log()
