"""SIGTERM mid-stream: the worker finishes or hands back its in-flight batches, commits, closes
its model backends and exits 0 within `shutdown_timeout_s`; after a restart every prompt ends
as its expected preferences. A second SIGTERM exits at once."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from karma.schemas.models import Preference
from tests.e2e.conftest import audit, ids, make_prompts
from tests.e2e.test_health import poll

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
SHUTDOWN_TIMEOUT_S = 30.0


def terminate(pipeline: Any, worker: subprocess.Popen[bytes], what: str) -> tuple[int, float]:
    """SIGTERM to the worker as an operator sends it: its exit code and how long it took."""
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=SHUTDOWN_TIMEOUT_S + 30)
    took = time.monotonic() - signalled
    pipeline.workers.remove(worker)
    print(f"{what} to exit: {took:.1f} s")
    return code, took


def test_sigterm_mid_stream_exits_0_in_bounded_time_and_loses_nothing(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(
        pool=[{"name": m, "simulated_latency_s": 0.2} for m in POOL],  # batches in flight
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    )
    prompts = make_prompts(300, tag="term")
    expected = pipeline.expected_preference_ids(prompts)
    pipeline.submit(prompts)
    worker = pipeline.start_worker()
    before = pipeline.wait_for("preferences", lambda r: len(set(ids(r))) >= 20)
    assert set(ids(before)) < expected, "SIGTERM must come mid-stream for this test to mean anything"

    code, took = terminate(pipeline, worker, "SIGTERM")
    assert code == 0, pipeline.log()
    assert took < SHUTDOWN_TIMEOUT_S + 5, (took, pipeline.log())
    assert "closed backends" in pipeline.log(), pipeline.log()

    pipeline.start_worker()
    received = pipeline.wait_for("preferences", lambda r: set(ids(r)) >= expected, timeout_s=240)
    assert set(ids(received)) == expected  # none lost, none invented
    # Redelivered batches repeat messages; their ids repeat with them, so one of each remains.
    assert all(isinstance(r.record, Preference) for r in received)
    assert audit(pipeline)["counts"]["unaccounted"] == 0


def test_a_second_sigterm_exits_at_once(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(
        # Slow enough that the first SIGTERM's graceful stop is still waiting on a batch.
        pool=[{"name": m, "simulated_latency_s": 20.0} for m in POOL],
        shutdown_timeout_s=120.0,
    )
    pipeline.submit(make_prompts(20, tag="twice"))
    worker = pipeline.start_worker()
    taken = 'karma_messages_in_total{stage="generation"}'  # a batch is in the backends' hands
    pipeline.wait_for_metrics(lambda text: taken in text, timeout_s=120)

    worker.send_signal(signal.SIGTERM)
    # The first signal handled (the second must be told apart from it): /readyz says so.
    poll(pipeline, "/readyz", lambda a: a == (503, "shutting down\n"), "shutting down")
    assert worker.poll() is None, "the first SIGTERM must not have finished the shutdown yet"
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=30)
    took = time.monotonic() - signalled
    pipeline.workers.remove(worker)
    print(f"second SIGTERM to exit: {took:.1f} s")
    assert code != 0
    assert took < 3.0, (took, pipeline.log())


def test_sigterm_during_start_up_exits_0(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory(shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    worker = pipeline.start_worker()
    poll(pipeline, "/healthz", lambda a: a is not None, "served")  # served before faust starts

    code, took = terminate(pipeline, worker, "SIGTERM during start-up")
    assert code == 0, pipeline.log()
    assert took < SHUTDOWN_TIMEOUT_S + 5, (took, pipeline.log())
