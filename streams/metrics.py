"""Prometheus metrics of every worker: `karma_` prefix, base units, no prompt ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
CONSUMER_LAG = Gauge(
    "karma_consumer_lag_messages",
    "Messages of a consumed partition not yet committed by this worker's group.",
    ["topic", "partition"],
)


class MetricsPortInUse(OSError):
    """The /metrics port is taken, typically by another worker on this host."""


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serves /metrics on a background thread; port 0 disables it."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise MetricsPortInUse(
            f"cannot serve /metrics on {host}:{port} ({exc.strerror}); "
            "give each worker on a host its own --metrics-port, or 0 to disable"
        ) from None
