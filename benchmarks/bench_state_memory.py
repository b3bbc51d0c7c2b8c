"""Memory of the rating worker per prompt it holds, with the `memory://` and `rocksdb://` stores.

For each store, one `karma worker rate` process (5-model pool, static competency, a backstop
long enough that nothing expires) on a throw-away broker:

1. warm-up: a few hundred complete prompts, so imports, tables and buffers are in place;
2. **in flight**: N prompts with 4 of their 5 answers, so every one stays open and its answers
   are stored (`rating-answers`) until the fifth comes; resident memory (VmRSS) before and
   after, divided by N;
3. **finished**: the fifth answers, so every prompt completes and is kept for `done_retention_s`
   (replays, late answers): VmRSS again, divided by N.

Usage: .venv/bin/python benchmarks/bench_state_memory.py [--prompts 20000] [--stores memory,rocksdb]
(`rocksdb://` needs `pip install 'karma-stream[rocksdb]'`, i.e. rocksdict).
Figures are resident memory as the kernel counts it, so allocator slack is in them: read them
as orders of magnitude, and compare the two stores measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kafka_bench import _status_kib, default_jars_home, publish, start_local_broker  # noqa: E402

from karma.localkafka.probes import free_ports  # noqa: E402
from karma.schemas.models import Prompt, Response, response_id_for  # noqa: E402
from karma.streams.codecs import encode  # noqa: E402
from karma.streams.config import KarmaSettings  # noqa: E402
from karma.streams.topics import ensure_topics  # noqa: E402
from karma.tools.processes import spawn_worker, stop_worker  # noqa: E402

POOL = ["llama-2-13b-chat", "wizardlm-13b", "vicuna-33b", "llama-2-70b-chat", "gpt-3.5-turbo"]
# About the size of a simulated answer (~50 words).
ANSWER = " ".join(["a plausible sentence of a model's answer, about this long"] * 6)


def answers(prompts: list[Prompt], models: list[str]) -> list[tuple[bytes, bytes]]:
    return [
        (
            p.prompt_id.encode(),
            encode(
                Response(
                    response_id=response_id_for(p.prompt_id, m),
                    prompt_id=p.prompt_id,
                    prompt_text=p.text,
                    model=m,
                    text=f"[simulated {m}] {ANSWER}",
                    backend="simulated",
                    simulated=True,
                    num_tokens=60,
                    latency_ms=1.0,
                )
            ),
        )
        for p in prompts
        for m in models
    ]


def gauge(port: int, name: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_until(check: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.5)


def rss_mib(pid: int) -> float:
    return (_status_kib(pid, "VmRSS") or 0) / 1024


def settle(pid: int) -> float:
    """VmRSS once it has stopped moving (three readings a second apart within 1 MiB)."""
    readings = [rss_mib(pid)]
    while True:
        time.sleep(1.0)
        readings.append(rss_mib(pid))
        if len(readings) >= 3 and max(readings[-3:]) - min(readings[-3:]) < 1.0:
            return readings[-1]


def measure(bootstrap: str, store: str, count: int, workdir: Path) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    port = free_ports(1)[0]
    settings = KarmaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"mem{run}.",
        app_id=f"mem-{run}",
        store=store,
        data_dir=workdir / f"data-{run}",
        metrics_port=port,
        lag_interval_s=0,
        pool=[{"name": m} for m in POOL],
        competency={"online": False},
        gather_timeout_s=3600.0,
    )
    asyncio.run(ensure_topics(settings))
    worker = spawn_worker(settings, workdir / f"worker-{store.split(':')[0]}.log", "worker", "rate")
    try:
        warm = [Prompt(prompt_id=f"warm-{i}", text=f"Warm-up question {i}?") for i in range(300)]
        asyncio.run(publish(bootstrap, settings.topic("responses"), answers(warm, POOL)))
        wait_until(lambda: gauge(port, "karma_pairs_total") is not None, "the worker to pair", 120)
        base = settle(worker.pid)
        held = [Prompt(prompt_id=f"held-{i}", text=f"Question {i}: why is that so?") for i in range(count)]
        asyncio.run(publish(bootstrap, settings.topic("responses"), answers(held, POOL[:4])))
        wait_until(
            lambda: (gauge(port, "karma_rating_pending_prompts") or 0) >= count, "prompts in flight", 600
        )
        in_flight = settle(worker.pid)
        asyncio.run(publish(bootstrap, settings.topic("responses"), answers(held, POOL[4:])))
        wait_until(lambda: gauge(port, "karma_rating_pending_prompts") == 0, "prompts to finish", 600)
        finished = settle(worker.pid)
        disk = sum(f.stat().st_size for f in settings.data_dir.rglob("*") if f.is_file()) / 2**20
    finally:
        stop_worker(worker)
    return {
        "base_mib": base,
        "in_flight_mib": in_flight,
        "finished_mib": finished,
        "kib_per_in_flight_prompt": (in_flight - base) * 1024 / count,
        "kib_per_finished_prompt": (finished - base) * 1024 / count,
        "data_dir_mib": disk,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20_000, help="prompts held at once")
    parser.add_argument("--stores", default="memory,rocksdb", help="memory and/or rocksdb")
    parser.add_argument("--bootstrap", help="an existing broker (default: a throw-away one)")
    args = parser.parse_args(argv)
    # aiokafka warns about retried produce requests to topics created a moment ago: harmless.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="karma-mem-") as tmp:
        workdir = Path(tmp)
        broker = None if args.bootstrap else start_local_broker(workdir / "broker", default_jars_home())
        bootstrap = args.bootstrap or broker.bootstrap
        try:
            results = {}
            for store in args.stores.split(","):
                print(f"{store}: {args.prompts:,} prompts in flight, then finished …", flush=True)
                results[store] = measure(bootstrap, f"{store}://", args.prompts, workdir)
        finally:
            if broker is not None:
                broker.stop()
    print(f"\nrating worker, {args.prompts:,} prompts x 5 models (answers of ~{len(ANSWER.split())} words)")
    columns = ("store", "base MiB", "KiB/in-flight prompt", "KiB/finished prompt", "disk MiB")
    print(f"{columns[0]:<9} {columns[1]:>9} {columns[2]:>21} {columns[3]:>20} {columns[4]:>9}")
    for store, r in results.items():
        print(
            f"{store:<9} {r['base_mib']:>9.0f} {r['kib_per_in_flight_prompt']:>21.1f} "
            f"{r['kib_per_finished_prompt']:>20.1f} {r['data_dir_mib']:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
