"""/healthz and /readyz of a running `karma run` worker, on the metrics port: alive from the
start, ready once its partitions are assigned and consumed, and "shutting down" (or gone) after
SIGTERM."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.conftest import Pipeline

TIMEOUT_S = 120.0  # generous: a slow shared CI machine starts faust and joins the group slowly


def probe(pipeline: Pipeline, path: str) -> tuple[int, str] | None:
    """(status, body) of GET `path`, or None while nothing answers on the port."""
    url = f"http://127.0.0.1:{pipeline.settings.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def poll(pipeline: Pipeline, path: str, until: Any, what: str) -> tuple[int, str] | None:
    """Probes `path` until `until(answer)` holds; fails with the worker log otherwise."""
    deadline = time.monotonic() + TIMEOUT_S
    seen = []
    while True:
        answer = probe(pipeline, path)
        seen.append(answer)
        if until(answer):
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"{path}: not {what} after {TIMEOUT_S} s (last {seen[-3:]})\n{pipeline.log()}")
        time.sleep(0.2)


def test_healthz_and_readyz_follow_the_worker_life_cycle(pipeline_factory: Any) -> None:
    pipeline = pipeline_factory()
    worker = pipeline.start_worker()

    alive = poll(pipeline, "/healthz", lambda a: a is not None, "served")
    assert alive is not None and alive[0] == 200 and alive[1].startswith("ok"), alive

    # Not ready while faust starts and the group assigns partitions, then ready: every answer
    # on the way is a 503 with a reason or the final 200.
    answers = []

    def ready(answer: tuple[int, str] | None) -> bool:
        answers.append(answer)
        return answer is not None and answer[0] == 200

    poll(pipeline, "/readyz", ready, "ready")
    for answer in answers:
        assert answer is not None and (answer[0] == 200 or (answer[0] == 503 and answer[1].strip())), answers
    assert answers[-1] == (200, "ready\n")
    assert probe(pipeline, "/healthz") == (200, "ok\n")  # the loop-lag watcher ticks
    assert "karma_event_loop_lag_seconds_count" in pipeline.metrics()  # /metrics is still served

    worker.send_signal(signal.SIGTERM)
    stopping = poll(
        pipeline,
        "/readyz",
        lambda a: a is None or a == (503, "shutting down\n") or worker.poll() is not None,
        "shutting down",
    )
    assert stopping in (None, (503, "shutting down\n")) or worker.poll() is not None, stopping
    assert worker.wait(timeout=TIMEOUT_S) == 0, pipeline.log()
    pipeline.workers.remove(worker)
