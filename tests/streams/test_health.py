"""Readiness and liveness logic (streams/health.py) and their HTTP answers beside /metrics
(streams/metrics.py), without Kafka."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from karma.streams.health import (
    LOADING_MODEL,
    NOT_ASSIGNED,
    REBALANCING,
    SHUTTING_DOWN,
    STARTING,
    Health,
)
from karma.streams.metrics import MetricsPortInUse, metrics_app, serve_metrics
from tests.conftest import free_ports


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def started(clock: Clock | None = None) -> Health:
    health = Health(live_within_s=5.0, startup_grace_s=60.0, clock=clock or Clock())
    health.beat()
    return health


def test_readiness_follows_start_assignment_rebalance_and_shutdown() -> None:
    health = Health()
    assert health.ready() == (False, STARTING)  # the event loop has not ticked yet
    health.beat()
    assert health.ready() == (False, NOT_ASSIGNED)
    health.mark_assigned({("prompts", 0), ("prompts", 1)})
    assert health.ready() == (False, REBALANCING)  # streams resume once the rebalance completes
    health.mark_consuming()
    assert health.ready() == (True, "ready")

    health.mark_revoked()  # the next rebalance: not ready until assigned and resumed again
    assert health.ready() == (False, NOT_ASSIGNED)
    health.mark_assigned([("prompts", 0)])
    health.mark_consuming()
    assert health.ready() == (True, "ready")

    health.mark_stopping()
    assert health.ready() == (False, SHUTTING_DOWN)
    health.mark_assigned([("prompts", 0)])
    health.mark_consuming()
    assert health.ready() == (False, SHUTTING_DOWN)  # for good


def test_an_empty_assignment_is_not_ready() -> None:
    health = started()
    health.mark_assigned(set())  # more workers than partitions
    health.mark_consuming()
    assert health.ready() == (False, NOT_ASSIGNED)


def test_not_ready_while_a_model_loads() -> None:
    health = Health()
    health.expect_model("judge-7b")
    health.expect_model("llama-8b")
    # loading comes before faust starts: it is the reason given, not "starting"
    assert health.ready() == (False, f"{LOADING_MODEL} judge-7b, llama-8b")
    health.mark_model_loaded("llama-8b")
    assert health.ready() == (False, f"{LOADING_MODEL} judge-7b")
    health.mark_model_loaded("judge-7b")
    assert health.ready() == (False, STARTING)
    health.beat()
    health.mark_assigned([("pairs", 0)])
    health.mark_consuming()
    assert health.ready() == (True, "ready")


def test_alive_while_models_load_and_the_start_up_grace_counts_from_their_end() -> None:
    clock = Clock()
    health = Health(live_within_s=5.0, startup_grace_s=60.0, clock=clock)
    health.expect_model("llama-70b")
    clock.now += 600  # weights load for ten minutes, in a thread: no beat meanwhile
    assert health.live() == (True, f"ok ({LOADING_MODEL} llama-70b)")
    health.mark_model_loaded("llama-70b")
    clock.now += 59  # faust starting: within the grace that began when loading ended
    assert health.live() == (True, "ok (starting)")
    clock.now += 2
    assert health.live()[0] is False


def test_liveness_needs_a_recent_tick_after_a_startup_grace() -> None:
    clock = Clock()
    health = Health(live_within_s=5.0, startup_grace_s=60.0, clock=clock)
    assert health.live() == (True, "ok (starting)")
    clock.now += 61  # faust never got its event loop going
    assert health.live()[0] is False
    health.beat()
    assert health.live() == (True, "ok")
    clock.now += 5
    assert health.live() == (True, "ok")
    clock.now += 1  # the loop-lag watcher has not ticked for 6 s: the loop is stuck
    alive, why = health.live()
    assert not alive and "unresponsive for 6 s" in why
    health.beat()
    assert health.live() == (True, "ok")


def call(app: object, path: str) -> tuple[str, bytes]:
    answer: list[str] = []
    body = b"".join(
        app(  # type: ignore[operator]
            {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""},
            lambda status, headers: answer.append(status),
        )
    )
    return answer[0], body


def test_checks_answer_200_or_503_and_everything_else_is_prometheus() -> None:
    health = started()

    def broken() -> tuple[bool, str]:
        raise RuntimeError("oops")

    app = metrics_app({"/healthz": health.live, "/readyz": health.ready, "/broken": broken})
    assert call(app, "/healthz") == ("200 OK", b"ok\n")
    assert call(app, "/readyz") == ("503 Service Unavailable", b"no partitions assigned\n")
    assert call(app, "/broken") == ("503 Service Unavailable", b"check failed: RuntimeError: oops\n")
    status, body = call(app, "/metrics")
    assert status.startswith("200") and b"karma_event_loop_lag_seconds" in body


def test_the_metrics_port_serves_the_checks_over_http() -> None:
    health = started()
    (port,) = free_ports(1)
    serve_metrics(port, "127.0.0.1", {"/healthz": health.live, "/readyz": health.ready})
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as reply:
        assert (reply.status, reply.read()) == (200, b"ok\n")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/readyz", timeout=10)
    assert refused.value.code == 503 and refused.value.read() == b"no partitions assigned\n"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        assert b"karma_messages_in" in reply.read()

    with pytest.raises(MetricsPortInUse):  # the port is now taken
        serve_metrics(port, "127.0.0.1")
