"""The floor under every faust stage: how fast a faust agent that does nothing drains a backlog,
beside the raw aiokafka ceiling, measured in one run on one throw-away broker.

    .venv/bin/python benchmarks/bench_faust_floor.py [--messages 40000]

A stage built on faust streams cannot beat this floor whatever it does per message; the gap
between the floor and the ceiling is faust's per-message machinery (stream iteration,
conductor, acks). It shows what share of the ceiling a faust stage can reach at most.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kafka_bench import TopicProbe, ceiling, default_jars_home, publish, start_local_broker  # noqa: E402

AGENT = Path(__file__).resolve().parent / "_faust_floor_agent.py"


async def drain_rate(bootstrap: str, mode: str, messages: int, log: Path) -> float:
    """Input messages/s of the agent in `mode`, over the span of its outputs' timestamps."""
    worker = subprocess.Popen(
        [sys.executable, str(AGENT), bootstrap, mode], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        async with TopicProbe(bootstrap, f"floor.out.{mode}") as probe:
            deadline = time.monotonic() + 180
            while await probe.count() < messages // 100:
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit(f"{mode}: the agent did not drain the backlog; see {log}")
                await asyncio.sleep(0.3)
            return messages / (await probe.span()).seconds
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40_000, help="backlog of 400-byte messages")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retried sends to new topics
    with tempfile.TemporaryDirectory(prefix="karma-floor-") as tmp:
        broker = start_local_broker(Path(tmp) / "broker", default_jars_home())
        try:
            # Warm the broker's JVM first (unreported), as bench_pipeline.py does.
            asyncio.run(ceiling(broker.bootstrap, "warm", 100_000, 400, 4, print))
            raw = asyncio.run(ceiling(broker.bootstrap, "ceiling", args.messages, 400, 4, print))
            items = ((f"k{i}".encode(), b"v" * 400) for i in range(args.messages))
            asyncio.run(publish(broker.bootstrap, "floor.in", items))
            rates = {
                mode: asyncio.run(
                    drain_rate(broker.bootstrap, mode, args.messages, Path(tmp) / f"{mode}.log")
                )
                for mode in ("plain", "batched")
            }
        finally:
            broker.stop()
    print(f"ceiling (aiokafka consume -> produce -> commit): {raw.rate:,.0f} msg/s")
    for mode, rate in rates.items():
        print(
            f"faust agent doing nothing, {mode:<8}: {rate:,.0f} msg/s = {rate / raw.rate:.1%} of the ceiling"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
