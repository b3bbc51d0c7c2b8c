"""Pairing cost for one prompt with many responses: `kin` (sort, then each response scans up to
`delta` above it for its nearest kin) against `sim` (every pair scored), side by side in one run.
Prints medians; it is not a test.

    .venv/bin/python benchmarks/bench_pairing.py [--responses 1000] [--repeats 21]

The responses come from as many synthetic models, with random 6-benchmark profiles (seeded),
so that no response is dropped as a second answer of the same model.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from karma.agents.kinship import KinRule, Profiles, Scored, normalise
from karma.agents.policies import select_pairs


def synthetic_pool(count: int, seed: int = 0) -> tuple[Profiles, list[Scored]]:
    rng = random.Random(seed)
    raw: dict[str, list[float | None]] = {
        f"model-{i:05d}": [rng.uniform(20, 95) for _ in range(6)] for i in range(count)
    }
    profiles = Profiles(benchmarks=tuple(f"b{j}" for j in range(6)), vectors=normalise(raw))
    responses = [Scored(f"r-{m}", m, profiles.superiority(m), rng.randint(20, 400)) for m in profiles.vectors]
    return profiles, responses


def median_ms(policy: str, profiles: Profiles, responses: list[Scored], repeats: int) -> tuple[float, int]:
    rule = KinRule(tau=0.95, delta=0.15, min_length_ratio=0.25)
    times, pairs = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        pairs = len(select_pairs(policy, responses, profiles, rule, seed_key="bench"))  # type: ignore[arg-type]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=1000, help="responses of the one prompt")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per policy (median reported)")
    args = parser.parse_args()
    if args.responses < 2 or args.repeats < 1:
        parser.error("--responses must be >= 2 and --repeats >= 1")
    profiles, responses = synthetic_pool(args.responses)
    kin_ms, kin_pairs = median_ms("kin", profiles, responses, args.repeats)
    sim_ms, _ = median_ms("sim", profiles, responses, max(1, args.repeats // 7))
    print(f"responses: {args.responses}, repeats: {args.repeats}")
    print(f"kin (sort + nearest kin): median {kin_ms:8.2f} ms, {kin_pairs} pairs  (target < 50 ms)")
    print(f"sim (all pairs scored):  median {sim_ms:8.2f} ms")
    print(f"all-pairs / kin: {sim_ms / kin_ms:.0f}x")


if __name__ == "__main__":
    main()
