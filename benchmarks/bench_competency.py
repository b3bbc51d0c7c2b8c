"""Cost of one online-competency refresh: the Bradley-Terry fit and blend (`assess`) that the
rating stage runs once per tick round, for pools of growing size. Prints medians; not a test.

    .venv/bin/python benchmarks/bench_competency.py [--models 16 64 256] [--repeats 21]

Every model pair has met 20 times in the window (the densest case; the kin policy makes the
real tallies much sparser), with outcomes drawn from Bradley-Terry at random true qualities.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import time

from karma.agents.competency import Tally, assess
from karma.agents.kinship import Profiles, normalise


def synthetic_window(count: int, seed: int = 0) -> tuple[Profiles, dict[tuple[str, str], Tally]]:
    rng = random.Random(seed)
    raw: dict[str, list[float | None]] = {
        f"m{i:04d}": [rng.uniform(20, 95) for _ in range(6)] for i in range(count)
    }
    profiles = Profiles(benchmarks=tuple(f"b{j}" for j in range(6)), vectors=normalise(raw))
    truth = {m: rng.random() for m in raw}
    tallies = {}
    for a, b in itertools.combinations(sorted(raw), 2):
        p = 1 / (1 + math.exp(-(truth[a] - truth[b]) / 0.1))
        tallies[(a, b)] = Tally(20, sum(rng.random() < p for _ in range(20)))
    return profiles, tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[16, 64, 256], help="pool sizes")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per size (median reported)")
    args = parser.parse_args()
    if min(args.models) < 2 or args.repeats < 1:
        parser.error("--models must be >= 2 and --repeats >= 1")
    for count in args.models:
        profiles, tallies = synthetic_window(count)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            assess(profiles.vectors, profiles, tallies, evidence=20, scale=0.1)
            times.append((time.perf_counter() - started) * 1000)
        median = statistics.median(times)
        print(f"{count:4d} models, {len(tallies):6d} pairs in the window: median {median:8.2f} ms")


if __name__ == "__main__":
    main()
