"""Prometheus metrics of every worker: `karma_` prefix, base units, no prompt ids in labels.

The metrics port also answers the worker's health checks (`/healthz`, `/readyz`): the paths and
their checks are given to `serve_metrics` (streams/health.py decides them), and everything else
goes to prometheus_client's own WSGI app, served as its `start_http_server` does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

MESSAGES_IN = Counter("karma_messages_in", "Messages a stage consumed.", ["stage"])
MESSAGES_OUT = Counter("karma_messages_out", "Messages a stage published.", ["stage", "topic"])
STAGE_LATENCY = Histogram(
    "karma_stage_latency_seconds",
    "Time a stage spent on one message, decode to publish.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Counter(
    "karma_dlq_messages", "Messages sent to the dead-letter topic.", ["stage", "error_type"]
)
PUBLISH_FAILURES = Counter(
    "karma_publish_failures",
    "Writes that failed: an output too large or refused by the broker (replaced by a dead letter), or a "
    "write that could not be made at all (the worker then stops without committing). `error` is the "
    "client's exception class, or exceeds_limit for a record found over its topic's limit before sending.",
    ["stage", "topic", "error"],
)
PAIRS = Counter("karma_pairs", "Pairs selected.", ["policy"])
KIN_GAP = Histogram(
    "karma_kin_gap",
    "Absolute superiority gap of selected pairs.",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
)
VERDICTS = Counter("karma_judge_verdicts", "Resolved verdicts.", ["winner", "consistent"])
DUPLICATES = Counter("karma_duplicates_dropped", "Replayed messages recognised and dropped.", ["stage"])
LATE_ANSWERS = Counter(
    "karma_rating_late_answers", "Answers that came after their prompt had finished, and were paired."
)
HANDLER_FAILURES = Counter(
    "karma_handler_failures", "Batch attempts that raised an unexpected exception (then retried).", ["stage"]
)
LOOP_LAG = Histogram(
    "karma_event_loop_lag_seconds",
    "How late a 50 ms timer fires: how long the worker's event loop was kept busy without yielding "
    "(heartbeats, fetches and every other task wait that long).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SECONDS = Histogram(
    "karma_batch_seconds",
    "Time a stage spent on one batch, decode to publish (awaits included).",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PENDING_PROMPTS = Gauge("karma_rating_pending_prompts", "Prompts whose responses are still being gathered.")
SUPERIORITY = Gauge(
    "karma_model_superiority",
    "A model's superiority as the rating stage sees it: prior (profiles), online (verdicts) or blended.",
    ["model", "estimate"],
)
COMPARISONS = Gauge(
    "karma_model_comparisons", "Judged comparisons of a model in the current competency window.", ["model"]
)
BACKEND_REQUESTS = Counter(
    "karma_backend_requests",
    "Requests to model backends that ended for good (after the backend's retries), by outcome.",
    ["stage", "backend", "model", "outcome"],
)
MODEL_VERSION = Gauge(
    "karma_generation_model_version",
    "The checkpoint version a generation worker serves for a model (1: the configured one).",
    ["model"],
)
CHECKPOINT_SWITCHES = Counter(
    "karma_generation_checkpoint_switches",
    "Checkpoints (karma.checkpoints) a generation worker acted on, by outcome.",
    ["model", "outcome"],
)
# `karma train` (tools/train/): one series per model it trains.
TRAIN_ROUNDS = Counter("karma_train_rounds", "DPO rounds finished and published as a checkpoint.", ["model"])
TRAIN_PREFERENCES = Counter(
    "karma_train_preferences",
    "Preferences the trainer read: trained on, or skipped (tie, policy, judge, confidence, ...).",
    ["model", "outcome"],
)
TRAIN_LOSS = Gauge("karma_train_loss", "Mean DPO loss of the last round.", ["model"])
TRAIN_REWARD_MARGIN = Gauge(
    "karma_train_reward_margin",
    "Mean implicit reward margin (chosen less rejected) of the last round.",
    ["model"],
)
TRAIN_VERSION = Gauge("karma_train_version", "The newest version the trainer has published.", ["model"])
TRAIN_ROUND_SECONDS = Histogram(
    "karma_train_round_seconds",
    "Wall time of one DPO round (load, train, save).",
    ["model"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
CONSUMER_LAG = Gauge(
    "karma_consumer_lag_messages",
    "Messages of a consumed partition not yet committed by this worker's group.",
    ["topic", "partition"],
)


# A check answers (healthy, why): 200 or 503, with `why` as the plain-text body.
Check = Callable[[], tuple[bool, str]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MetricsPortInUse(OSError):
    """The /metrics port is taken, typically by another worker on this host."""


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: probes every few seconds would fill the worker log."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def metrics_app(checks: Mapping[str, Check] | None = None) -> WsgiApp:
    """A WSGI app: each path of `checks` answers its check, anything else is prometheus_client's."""
    metrics = make_wsgi_app()
    checks = dict(checks or {})

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        check = checks.get(environ.get("PATH_INFO", ""))
        if check is None:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        try:
            healthy, why = check()
        except Exception as exc:  # a broken check must say so, not hang up on the prober
            healthy, why = False, f"check failed: {type(exc).__name__}: {exc}"
        body = f"{why}\n".encode()
        start_response(
            "200 OK" if healthy else "503 Service Unavailable",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def serve_metrics(port: int, host: str = "127.0.0.1", checks: Mapping[str, Check] | None = None) -> None:
    """Serves /metrics, and the paths of `checks`, on a daemon thread; port 0 disables it."""
    if not port:
        return

    try:

        class Server(ThreadingWSGIServer):
            # A class per call, as prometheus_client does: the family follows the host (IPv4 or 6).
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

        httpd = make_server(host, port, metrics_app(checks), Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise MetricsPortInUse(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror}); "
            "give each worker on a host its own --metrics-port, or 0 to disable"
        ) from None
    threading.Thread(target=httpd.serve_forever, name="karma-metrics", daemon=True).start()
